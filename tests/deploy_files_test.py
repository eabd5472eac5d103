#!/usr/bin/env python3
"""Checks the deploy files (Dockerfile, deploy/compose.yaml, deploy/k8s/, deploy/prometheus.yml,
deploy/grafana/) against each other and against the code:

- every YAML/JSON file parses;
- every quantd / quantd-worker flag they pass is defined in server/main.cc or
  worker/worker_main.cc;
- Kubernetes: gRPC probes on 7070, the data dir on a persistent volume, GPU limits on the
  workers, workers dial the coordinator Service, the ServiceMonitor selects that Service's labels
  and port, kustomization lists every resource and names the images in use;
- Compose: service names, ports and the Prometheus/Grafana wiring agree;
- Grafana: every PromQL expression names only metrics quantd exports (server/metrics.cc), and
  the README metrics table lists them all; with promtool (Debian package prometheus) every
  expression and prometheus.yml are also parsed by Prometheus' own parser;
- job inputs: quantd confines them with --input_root on a mounted volume (the image creates
  the Dockerfile's root), never --allow_any_input_path;
- Dockerfile: stages, flags, ports, user, volume; its runtime stage installs the Debian package
  of every shared library the built binaries load (ldd + dpkg -S);
- the checks catch breakage: an unmodified copy passes, and each of a few mutated copies fails;
- schema: the Kubernetes manifests are validated with kubernetes-validate (PyPI, installed into a
  venv under $QUANTD_BINARY_DIR). Only this step may be skipped, with a message, when the tool
  cannot be installed.

Needs PyYAML (Debian python3-yaml). Exit 0 pass, 1 fail.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import yaml

SOURCE_DIR = os.path.abspath(os.environ.get("QUANTD_SOURCE_DIR",
                                            os.path.join(os.path.dirname(__file__), "..")))
BINARY_DIR = os.path.abspath(os.environ.get("QUANTD_BINARY_DIR", os.path.join(SOURCE_DIR, "build")))
K8S_VALIDATE_VERSION = "1.37.0"
K8S_VERSION = "1.30.0"


class Checker:
    """Collects failures for one copy of the repository's deploy files."""

    def __init__(self, root):
        self.root = root
        self.errors = []

    def check(self, cond, msg):
        if not cond:
            self.errors.append(msg)
        return cond

    def path(self, *p):
        return os.path.join(self.root, *p)


# -- code facts --------------------------------------------------------------------------------

def defined_flags(path):
    with open(os.path.join(SOURCE_DIR, path)) as f:
        return set(re.findall(r"ABSL_FLAG\(\s*[\w:]+\s*,\s*(\w+)\s*,", f.read()))


QUANTD_FLAGS = defined_flags("server/main.cc")
WORKER_FLAGS = defined_flags("worker/worker_main.cc")


def exported_metrics():
    """{name: type} from server/metrics.cc: Build{Counter,Gauge,Histogram}().Name("...") or its
    Family(registry, Build...(), "name", ...) helper."""
    with open(os.path.join(SOURCE_DIR, "server", "metrics.cc")) as f:
        text = f.read()
    return {name: kind.lower() for kind, name in
            re.findall(r"Build(Counter|Gauge|Histogram)\(\)\s*(?:\.Name\(|,\s*)\"(\w+)\"", text)}


def series_names(metrics):
    names = set()
    for name, kind in metrics.items():
        names.add(name)
        if kind == "histogram":
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


def parse_flags(argv):
    """--name=value / --name value -> {name: value}."""
    flags, i = {}, 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a[2:].split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                k, v = a[2:], argv[i + 1]
                i += 1
            else:
                k, v = a[2:], ""
            flags[k] = v
        i += 1
    return flags


def check_command(c, where, argv):
    """argv[0] is quantd or quantd-worker; checks every flag exists. Returns (binary, flags)."""
    if not c.check(argv and os.path.basename(argv[0]) in ("quantd", "quantd-worker"),
                   "%s: command %r does not run quantd or quantd-worker" % (where, argv)):
        return None, {}
    binary = os.path.basename(argv[0])
    flags = parse_flags(argv[1:])
    known = QUANTD_FLAGS if binary == "quantd" else WORKER_FLAGS
    for k in flags:
        c.check(k in known, "%s: %s has no flag --%s (defined: %s)" % (
            where, binary, k, ", ".join(sorted(known))))
    return binary, flags


def check_input_roots(c, where, argv, mounts):
    """quantd must confine job inputs with --input_root (never --allow_any_input_path), each
    root on one of `mounts` (container paths; None: not checked)."""
    roots = [a.split("=", 1)[1] for a in argv if a.startswith("--input_root=")]
    roots += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--input_root"]
    c.check("allow_any_input_path" not in parse_flags(argv[1:]),
            "%s: quantd must not run with --allow_any_input_path" % where)
    if not c.check(roots, "%s: quantd needs --input_root (without one every submission is "
                   "refused)" % where):
        return
    for r in roots:
        if mounts is not None:
            c.check(any(r == m or r.startswith(m.rstrip("/") + "/") for m in mounts),
                    "%s: --input_root=%s is not on a mounted volume (mounts: %s)" % (
                        where, r, sorted(mounts)))


# -- files -------------------------------------------------------------------------------------

def load_all(c):
    """Parses every .yaml/.yml/.json under deploy/; returns {relative path: [documents]}."""
    docs = {}
    for dirpath, _, files in os.walk(c.path("deploy")):
        for name in sorted(files):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, c.root)
            try:
                with open(full) as f:
                    if name.endswith(".json"):
                        docs[rel] = [json.load(f)]
                    elif name.endswith((".yaml", ".yml")):
                        docs[rel] = [d for d in yaml.safe_load_all(f) if d is not None]
            except (ValueError, yaml.YAMLError) as e:
                c.check(False, "%s does not parse: %s" % (rel, e))
    return docs


def k8s_objects(docs):
    objs = []
    for rel, ds in docs.items():
        if rel.startswith("deploy/k8s/"):
            for d in ds:
                if isinstance(d, dict) and "kind" in d:
                    objs.append((rel, d))
    return objs


def by_kind(objs, kind):
    return [(rel, o) for rel, o in objs if o.get("kind") == kind]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_k8s(c, docs):
    objs = k8s_objects(docs)
    services = {o["metadata"]["name"]: o for _, o in by_kind(objs, "Service")}
    sts = by_kind(objs, "StatefulSet")
    if not c.check(len(sts) == 1, "deploy/k8s: expected one StatefulSet (the coordinator), got %d" % len(sts)):
        return
    rel, st = sts[0]
    spec = st["spec"]
    pod = spec["template"]
    c.check(spec.get("replicas", 1) == 1, "%s: the coordinator must run one replica (one SQLite job store)" % rel)
    c.check(selects(spec["selector"]["matchLabels"], pod["metadata"]["labels"]),
            "%s: selector does not match the pod labels" % rel)
    c.check(spec.get("serviceName") in services,
            "%s: serviceName %r is not a Service in deploy/k8s" % (rel, spec.get("serviceName")))
    ann = pod["metadata"].get("annotations", {})
    c.check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "9464",
            "%s: pod template needs prometheus.io/scrape \"true\" and prometheus.io/port \"9464\"" % rel)
    containers = pod["spec"]["containers"]
    coord = [x for x in containers if x.get("command", [""])[0] == "quantd"]
    if not c.check(len(coord) == 1, "%s: no container runs quantd" % rel):
        return
    ctr = coord[0]
    _, flags = check_command(c, rel, ctr["command"] + ctr.get("args", []))
    c.check(flags.get("listen") == "0.0.0.0:7070", "%s: quantd must --listen=0.0.0.0:7070" % rel)
    c.check(flags.get("metrics_listen") == "0.0.0.0:9464",
            "%s: quantd must --metrics_listen=0.0.0.0:9464" % rel)
    c.check(flags.get("local_workers") == "0", "%s: the coordinator pod spawns no workers (--local_workers=0)" % rel)
    ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
    c.check(ports.get("grpc") == 7070 and ports.get("metrics") == 9464,
            "%s: container ports must be grpc 7070 and metrics 9464, got %s" % (rel, ports))
    for probe in ("readinessProbe", "livenessProbe"):
        p = ctr.get(probe, {})
        c.check(p.get("grpc", {}).get("port") == 7070,
                "%s: %s must be a gRPC probe (grpc.health.v1) on port 7070, got %s" % (rel, probe, p))
    data_dir = flags.get("data_dir", "")
    mounts = {m["mountPath"]: m["name"] for m in ctr.get("volumeMounts", [])}
    check_input_roots(c, rel, ctr["command"] + ctr.get("args", []), set(mounts))
    claim_names = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    pvc_volumes = {v["name"] for v in pod["spec"].get("volumes", []) if "persistentVolumeClaim" in v}
    c.check(data_dir and mounts.get(data_dir) in claim_names | pvc_volumes,
            "%s: --data_dir=%s must be mounted from a volumeClaimTemplate or PVC (mounts: %s)" % (
                rel, data_dir, mounts))

    # The coordinator Service: gRPC 7070 and metrics 9464, selecting the coordinator pods.
    coord_svcs = [s for s in services.values() if selects(s["spec"].get("selector"), pod["metadata"]["labels"])
                  and any(p["port"] == 9464 for p in s["spec"]["ports"])]
    if not c.check(len(coord_svcs) == 1, "deploy/k8s: expected one Service with port 9464 selecting the coordinator"):
        return
    svc = coord_svcs[0]
    svc_ports = {p.get("name"): p["port"] for p in svc["spec"]["ports"]}
    c.check(svc_ports.get("grpc") == 7070 and svc_ports.get("metrics") == 9464,
            "Service %s: ports must be grpc 7070 and metrics 9464, got %s" % (svc["metadata"]["name"], svc_ports))
    for p in svc["spec"]["ports"]:
        tp = p.get("targetPort", p["port"])
        c.check(tp in ports or tp in ports.values(),
                "Service %s: targetPort %r is not a coordinator container port" % (svc["metadata"]["name"], tp))

    # GPU workers.
    deps = by_kind(objs, "Deployment")
    workers = [(r, d) for r, d in deps for x in d["spec"]["template"]["spec"]["containers"]
               if x.get("command", [""])[0] == "quantd-worker"]
    if c.check(workers, "deploy/k8s: no Deployment runs quantd-worker"):
        wrel, wd = workers[0]
        wpod = wd["spec"]["template"]
        c.check(selects(wd["spec"]["selector"]["matchLabels"], wpod["metadata"]["labels"]),
                "%s: selector does not match the pod labels" % wrel)
        c.check(not selects(spec["selector"]["matchLabels"], wpod["metadata"]["labels"]),
                "%s: worker pods must not match the coordinator's selector" % wrel)
        for x in wpod["spec"]["containers"]:
            _, wflags = check_command(c, wrel, x["command"] + x.get("args", []))
            gpus = x.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            c.check(str(gpus) == "1", "%s: worker limits must have nvidia.com/gpu: 1, got %r" % (wrel, gpus))
            c.check(wflags.get("device") == "auto", "%s: workers run --device=auto" % wrel)
            host, _, port = wflags.get("coordinator", "").partition(":")
            target = services.get(host)
            c.check(target is svc and port == "7070",
                    "%s: --coordinator=%s must be the coordinator Service %s:7070" % (
                        wrel, wflags.get("coordinator"), svc["metadata"]["name"]))
            wm = {m["name"]: m["mountPath"] for m in x.get("volumeMounts", [])}
            cache = wflags.get("cache_dir")
            c.check(cache in wm.values(), "%s: --cache_dir=%s is not a mounted volume" % (wrel, cache))

    # ServiceMonitor.
    sms = by_kind(objs, "ServiceMonitor")
    if c.check(len(sms) == 1, "deploy/k8s: expected one ServiceMonitor"):
        srel, sm = sms[0]
        c.check(sm["apiVersion"] == "monitoring.coreos.com/v1", "%s: apiVersion must be monitoring.coreos.com/v1" % srel)
        sel = sm["spec"]["selector"].get("matchLabels", {})
        c.check(selects(sel, svc["metadata"].get("labels", {})),
                "%s: selector %s does not match Service %s labels %s" % (
                    srel, sel, svc["metadata"]["name"], svc["metadata"].get("labels")))
        for ep in sm["spec"]["endpoints"]:
            c.check(ep.get("port") in svc_ports and svc_ports[ep["port"]] == 9464,
                    "%s: endpoint port %r is not Service %s's metrics port" % (srel, ep.get("port"), svc["metadata"]["name"]))
        # Every other selected Service must not expose a port of that name (double scrape).
        for name, s in services.items():
            if s is not svc and selects(sel, s["metadata"].get("labels", {})):
                c.check(all(p.get("name") != "metrics" for p in s["spec"]["ports"]),
                        "%s: also selects Service %s, which has a metrics port" % (srel, name))

    # kustomization: resources exist; every manifest but the ServiceMonitor is listed.
    kus = docs.get("deploy/k8s/kustomization.yaml")
    if c.check(kus, "deploy/k8s/kustomization.yaml is missing"):
        k = kus[0]
        res = k.get("resources", [])
        for r in res:
            c.check(os.path.exists(c.path("deploy", "k8s", r)), "kustomization.yaml: resource %s does not exist" % r)
        for rel, ds in docs.items():
            base = os.path.basename(rel)
            if rel.startswith("deploy/k8s/") and base != "kustomization.yaml" and not any(
                    d.get("kind") == "ServiceMonitor" for d in ds):
                c.check(base in res, "kustomization.yaml does not list %s" % base)
        images = {i["name"] for i in k.get("images", [])}
        for _, o in objs:
            for x in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                c.check(x["image"].split(":")[0] in images,
                        "kustomization.yaml images does not name %s" % x["image"])


def check_compose(c, docs):
    rel = "deploy/compose.yaml"
    if not c.check(rel in docs, "%s is missing" % rel):
        return
    services = docs[rel][0]["services"]
    for name in ("quantd", "prometheus", "grafana"):
        c.check(name in services, "%s: no service %s" % (rel, name))
    if "quantd" not in services:
        return
    q = services["quantd"]
    _, flags = check_command(c, rel + " quantd", q["command"])
    c.check(flags.get("listen") == "0.0.0.0:7070" and flags.get("metrics_listen") == "0.0.0.0:9464",
            "%s: quantd must listen on 0.0.0.0:7070 with metrics on 0.0.0.0:9464, got %s" % (rel, flags))
    c.check("7070:7070" in q.get("ports", []) and "9464:9464" in q.get("ports", []),
            "%s: quantd must publish 7070 and 9464" % rel)
    vols = {v.split(":")[1]: v.split(":")[0] for v in q.get("volumes", [])}
    check_input_roots(c, rel + " quantd", q["command"], set(vols))
    c.check(vols.get(flags.get("data_dir")) in docs[rel][0].get("volumes", {}),
            "%s: --data_dir=%s must be a named volume" % (rel, flags.get("data_dir")))
    workers = [n for n, s in services.items()
               if isinstance(s.get("command"), list) and s["command"][0] == "quantd-worker"]
    c.check(len(workers) >= 2, "%s: expected two workers, got %s" % (rel, workers))
    for w in workers:
        _, wflags = check_command(c, "%s %s" % (rel, w), services[w]["command"])
        c.check(wflags.get("coordinator") == "quantd:7070",
                "%s: %s must dial quantd:7070, got %s" % (rel, w, wflags.get("coordinator")))
    # Bind mounts exist.
    for name, s in services.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if src.startswith("."):
                c.check(os.path.exists(c.path("deploy", src)), "%s: %s mounts missing %s" % (rel, name, src))
    # Prometheus scrapes quantd's metrics port.
    prom = docs.get("deploy/prometheus.yml", [{}])[0]
    targets = [t for sc in prom.get("scrape_configs", []) for s in sc.get("static_configs", [])
               for t in s.get("targets", [])]
    c.check("quantd:9464" in targets, "deploy/prometheus.yml must scrape quantd:9464, got %s" % targets)
    pm = {v.split(":")[1]: v.split(":")[0] for v in services.get("prometheus", {}).get("volumes", [])}
    c.check(pm.get("/etc/prometheus/prometheus.yml") == "./prometheus.yml",
            "%s: prometheus must mount ./prometheus.yml" % rel)
    # Grafana: datasource points at the prometheus service, dashboards path is mounted.
    ds = docs.get("deploy/grafana/provisioning/datasources/prometheus.yaml", [{}])[0]
    urls = [d.get("url") for d in ds.get("datasources", [])]
    c.check("http://prometheus:9090" in urls and "9090:9090" in services.get("prometheus", {}).get("ports", []),
            "Grafana datasource must be http://prometheus:9090 (the compose service), got %s" % urls)
    gm = {v.split(":")[1]: v.split(":")[0] for v in services.get("grafana", {}).get("volumes", [])}
    c.check(gm.get("/etc/grafana/provisioning") == "./grafana/provisioning",
            "%s: grafana must mount ./grafana/provisioning" % rel)
    prov = docs.get("deploy/grafana/provisioning/dashboards/quantd.yaml", [{}])[0]
    for p in prov.get("providers", []):
        path = p.get("options", {}).get("path", "")
        c.check(gm.get(path + "/quantd.json") == "./grafana/quantd.json",
                "%s: grafana must mount ./grafana/quantd.json under %s" % (rel, path))


PROMQL_WORDS = {"sum", "by", "without", "rate", "irate", "increase", "histogram_quantile", "le",
                "max", "min", "avg", "count", "on", "ignoring", "group_left", "group_right",
                "and", "or", "unless", "offset", "bool", "topk", "bottomk", "clamp_min",
                "clamp_max", "delta", "deriv", "max_over_time", "min_over_time", "avg_over_time",
                "sum_over_time", "abs", "time", "vector", "scalar", "label_replace"}


def dashboard_exprs(dash):
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            yield p, t.get("expr", "")


def check_grafana(c, docs):
    rel = "deploy/grafana/quantd.json"
    if not c.check(rel in docs, "%s is missing" % rel):
        return []
    dash = docs[rel][0]
    metrics = exported_metrics()
    names = series_names(metrics)
    ds = docs.get("deploy/grafana/provisioning/datasources/prometheus.yaml", [{}])[0]
    uids = {d.get("uid") for d in ds.get("datasources", [])}
    used = set()
    exprs = []
    for p, e in dashboard_exprs(dash):
        title = p.get("title")
        c.check(p.get("datasource", {}).get("uid") in uids,
                "%s: panel %r uses datasource %s, provisioned: %s" % (rel, title, p.get("datasource"), uids))
        if not c.check(e.strip(), "%s: panel %r has an empty expression" % (rel, title)):
            continue
        exprs.append(e)
        stripped = re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^\]]*\]", "", e))  # drop matchers, ranges
        idents = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped)) - PROMQL_WORDS
        labels = set()
        for grp in re.findall(r"(?:by|without|on|ignoring)\s*\(([^)]*)\)", e):
            labels.update(x.strip() for x in grp.split(","))
        idents -= labels
        c.check(any(i in names for i in idents), "%s: panel %r: %r names no quantd metric" % (rel, title, e))
        for i in idents:
            c.check(i in names, "%s: panel %r: %r is not a metric quantd exports (server/metrics.cc)" % (rel, title, i))
            if i in names:
                used.add(re.sub(r"_(bucket|sum|count)$", "", i) if i not in metrics else i)
        if "histogram_quantile" in e:
            c.check("_bucket" in e and "le" in e, "%s: panel %r: histogram_quantile needs _bucket by le" % (rel, title))
    required = {"quantd_jobs", "quantd_job_progress_ratio", "quantd_tasks_total",
                "quantd_task_duration_seconds", "quantd_workers", "quantd_lease_expirations_total",
                "quantd_hessian_tokens_total", "quantd_weights_quantized_total",
                "quantd_artifact_bytes_served_total", "quantd_matrix_proxy_loss"}
    c.check(required <= used, "%s: the dashboard does not show %s" % (rel, sorted(required - used)))
    # The README metrics reference lists every exported metric.
    with open(c.path("README.md")) as f:
        readme = f.read()
    for m in metrics:
        c.check("`%s`" % m in readme, "README.md metrics table does not list %s" % m)
    return exprs


def check_dockerfile(c):
    rel = "Dockerfile"
    if not c.check(os.path.exists(c.path(rel)), "Dockerfile is missing"):
        return
    with open(c.path(rel)) as f:
        text = re.sub(r"\\\n", " ", f.read())
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    stages = [re.match(r"FROM\s+(?:--\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", l, re.I).groups()
              for l in lines if l.upper().startswith("FROM ")]
    names = [s[1] for s in stages]
    c.check("quantd" in names and "worker-cuda" in names,
            "Dockerfile: needs stages quantd and worker-cuda, has %s" % names)
    c.check(stages and stages[-1][1] == "quantd", "Dockerfile: the last (default) stage must be quantd")
    c.check(any(s[0].startswith("debian:12-slim") for s in stages), "Dockerfile: runtime must be debian:12-slim")
    c.check(any(s[0].startswith("debian:12") and not s[0].startswith("debian:12-slim") for s in stages),
            "Dockerfile: builder must be debian:12")
    # The final stage's instructions.
    last = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    final = lines[last:]
    joined = "\n".join(final)
    c.check(re.search(r"^EXPOSE\s+7070\s+9464\s*$", joined, re.M), "Dockerfile: quantd stage must EXPOSE 7070 9464")
    c.check(re.search(r"^USER\s+quantd\s*$", joined, re.M), "Dockerfile: quantd stage must run as USER quantd")
    c.check(re.search(r"^VOLUME\s+\[?\"?/var/lib/quantd", joined, re.M), "Dockerfile: VOLUME /var/lib/quantd")
    cmds = [l for l in final if l.upper().startswith("CMD ")]
    if c.check(cmds, "Dockerfile: quantd stage has no CMD"):
        argv = json.loads(cmds[-1][4:])
        _, flags = check_command(c, "Dockerfile CMD", argv)
        want = {"listen": "0.0.0.0:7070", "metrics_listen": "0.0.0.0:9464",
                "data_dir": "/var/lib/quantd", "local_workers": "0"}
        for k, v in want.items():
            c.check(flags.get(k) == v, "Dockerfile CMD: --%s must be %s, got %s" % (k, v, flags.get(k)))
        check_input_roots(c, "Dockerfile CMD", argv, None)
        for r in (a.split("=", 1)[1] for a in argv if a.startswith("--input_root=")):
            c.check(re.search(r"install -d[^\n]*\s%s(\s|$)" % re.escape(r), "\n".join(lines)),
                    "Dockerfile: --input_root=%s must exist in the image (install -d %s), or "
                    "quantd refuses to start" % (r, r))
    for l in lines:
        if l.upper().startswith("CMD ") and "quantd-worker" in l:
            check_command(c, "Dockerfile worker CMD", json.loads(l[4:]))
    c.check(os.path.exists(c.path(".dockerignore")), ".dockerignore is missing")


BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g"}  # in debian:12-slim
# CUDA toolkit library (soname stem) -> NVIDIA Debian 12 package stem (+ "-${CUDA_VERSION}").
CUDA_LIBRARY_PACKAGES = {"libcudart": "cuda-cudart", "libcublas": "libcublas",
                         "libcublasLt": "libcublas", "libcusolver": "libcusolver",
                         "libcusparse": "libcusparse", "libnvJitLink": "libnvjitlink"}


def check_runtime_libraries(c):
    """Every shared library the built binaries load comes from a package the Dockerfile's runtime
    stage installs (or debian:12-slim already has). Needs the binaries in $QUANTD_BINARY_DIR."""
    bins = [os.path.join(BINARY_DIR, b) for b in ("quantd", "quantd-worker", "quantctl")]
    if not all(os.path.exists(b) for b in bins) or not shutil.which("ldd") or not shutil.which("dpkg"):
        print("note: binaries, ldd or dpkg missing: runtime library list not checked")
        return
    with open(c.path("Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    stage = re.search(r"FROM debian:12-slim AS runtime\n(.*?)\nFROM ", text, re.S)
    if not c.check(stage, "Dockerfile: no 'FROM debian:12-slim AS runtime' stage"):
        return
    installed = set(re.findall(r"\b(lib[\w.+-]+)", stage.group(1)))
    libs = set()
    for b in bins:
        out = subprocess.run(["ldd", b], capture_output=True, text=True).stdout
        libs.update(m for m in re.findall(r"=> (/\S+)", out))
    # A build with the CUDA device (QUANTD_CUDA, issue 6) also loads CUDA toolkit libraries: they
    # come from NVIDIA's repository, which the worker-cuda stage installs them from.
    cuda_stage = re.search(r"FROM runtime AS worker-cuda\n(.*?)(\nFROM |\Z)", text, re.S)
    for lib in sorted(l for l in libs if "/cuda" in os.path.realpath(l) or "/cuda" in l):
        libs.discard(lib)
        name = os.path.basename(lib).split(".so")[0]
        pkg = CUDA_LIBRARY_PACKAGES.get(name)
        if not c.check(pkg, "%s: a CUDA library with no known NVIDIA package" % lib):
            continue
        c.check(cuda_stage and (pkg + "-${CUDA_VERSION}") in cuda_stage.group(1),
                "Dockerfile worker-cuda stage does not install %s-${CUDA_VERSION} (for %s)" % (pkg, lib))
    # A sanitizer build (scripts/test.sh --sanitize=...) also loads the sanitizer runtimes; the
    # image is never built from one, so they are not the runtime stage's business.
    sanitizer = re.compile(r"/lib(asan|ubsan|tsan|lsan)\.so")
    for lib in sorted(l for l in libs if sanitizer.search(l)):
        print("note: %s is a sanitizer runtime (instrumented build): not checked" % lib)
        libs.discard(lib)
    # The TSan tier builds with clang, whose OpenMP runtime is LLVM's libomp; the image builds
    # with GCC (libgomp, checked like any other library).
    for lib in sorted(l for l in libs if re.search(r"/llvm-[0-9]+/lib/libomp\.so", l)):
        print("note: %s is clang's OpenMP runtime (clang build): not checked" % lib)
        libs.discard(lib)
    for lib in sorted(libs):
        r = subprocess.run(["dpkg", "-S", os.path.realpath(lib)], capture_output=True, text=True)
        if r.returncode != 0:
            r = subprocess.run(["dpkg", "-S", lib], capture_output=True, text=True)
        if r.returncode != 0:
            c.check(False, "Dockerfile runtime: %s belongs to no Debian package" % lib)
            continue
        pkg = r.stdout.split(":")[0]
        c.check(pkg in installed or pkg in BASE_IMAGE_PACKAGES,
                "Dockerfile runtime stage does not install %s (for %s)" % (pkg, lib))


def check_promtool(c, exprs):
    """Parses every dashboard expression and prometheus.yml with Prometheus' own parser."""
    promtool = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)
    if not promtool:
        print("note: promtool not found (Debian package prometheus): PromQL syntax not parsed")
        return
    with tempfile.TemporaryDirectory() as tmp:
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": "dashboard:expr_%d" % i, "expr": e.replace("$__rate_interval", "1m")}
            for i, e in enumerate(exprs)]}]}
        path = os.path.join(tmp, "rules.yml")
        with open(path, "w") as f:
            yaml.safe_dump(rules, f)
        r = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        c.check(r.returncode == 0, "promtool rejects a dashboard expression:\n%s%s" % (r.stdout, r.stderr))
    r = subprocess.run([promtool, "check", "config", c.path("deploy", "prometheus.yml")],
                       capture_output=True, text=True)
    c.check(r.returncode == 0, "promtool rejects deploy/prometheus.yml:\n%s%s" % (r.stdout, r.stderr))


def run_checks(root, promtool=True):
    c = Checker(root)
    docs = load_all(c)
    if c.errors:
        return c.errors
    for fn in (check_k8s, check_compose):
        try:
            fn(c, docs)
        except (KeyError, TypeError, IndexError, AttributeError) as e:
            c.check(False, "%s: missing or malformed field: %r" % (fn.__name__, e))
    exprs = check_grafana(c, docs)
    check_dockerfile(c)
    if promtool:  # the real files only (the mutation copies skip these slower checks)
        check_promtool(c, exprs)
        check_runtime_libraries(c)
    return c.errors


# -- mutations: the checks must catch these ---------------------------------------------------

MUTATIONS = [
    ("deploy/k8s/coordinator-statefulset.yaml", "            grpc:\n              port: 7070\n            periodSeconds: 5",
     "            grpc:\n              port: 7071\n            periodSeconds: 5", "readinessProbe"),
    ("deploy/k8s/worker-deployment.yaml", "nvidia.com/gpu: 1", "nvidia.com/gpu: 0", "nvidia.com/gpu"),
    ("deploy/k8s/coordinator-statefulset.yaml", "mountPath: /var/lib/quantd", "mountPath: /data", "--data_dir"),
    ("deploy/k8s/servicemonitor.yaml", "app.kubernetes.io/component: coordinator",
     "app.kubernetes.io/component: coord", "ServiceMonitor".lower()),
    ("deploy/k8s/worker-deployment.yaml", "--coordinator=quantd:7070", "--coordinatr=quantd:7070", "no flag"),
    ("deploy/compose.yaml", "--coordinator=quantd:7070", "--coordinator=quantd:7071", "must dial"),
    ("deploy/prometheus.yml", "quantd:9464", "quantd:9465", "scrape"),
    ("deploy/grafana/quantd.json", "quantd_jobs)", "quantd_jobz)", "quantd_jobz"),
    ("deploy/k8s/coordinator-service.yaml", "  ports:\n    - name: grpc\n      port: 7070\n      targetPort: grpc\n      protocol",
     "  ports:\n    - name: grpc\n      port: 7070\n      targetPort: grpc\n     protocol", "parse"),
    ("Dockerfile", "--metrics_listen=0.0.0.0:9464", "--metrics-listen=0.0.0.0:9464", "no flag"),
    ("deploy/compose.yaml", "      - --input_root=/examples\n", "", "needs --input_root"),
    ("deploy/k8s/coordinator-statefulset.yaml", "--input_root=/models", "--input_root=/srv/models",
     "not on a mounted volume"),
    ("Dockerfile", " \\\n && install -d /models", "", "must exist in the image"),
]


def copy_tree(root):
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    shutil.copytree(os.path.join(SOURCE_DIR, "deploy"), os.path.join(root, "deploy"))
    for f in ("Dockerfile", ".dockerignore", "README.md"):
        shutil.copy(os.path.join(SOURCE_DIR, f), root)
    os.symlink(os.path.join(SOURCE_DIR, "examples"), os.path.join(root, "examples"))


def check_mutations():
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "root")
        copy_tree(root)
        baseline = run_checks(root, promtool=False)
        if baseline:
            return ["an unmodified copy of the deploy files fails the checks: %s" % baseline]
        for rel, old, new, expect in MUTATIONS:
            copy_tree(root)
            path = os.path.join(root, rel)
            with open(path) as f:
                text = f.read()
            if old not in text:
                failures.append("mutation target not found in %s: %r" % (rel, old))
                continue
            with open(path, "w") as f:
                f.write(text.replace(old, new, 1))
            errors = run_checks(root, promtool=False)
            if not any(expect.lower() in e.lower() for e in errors):
                failures.append("breaking %s (%r -> %r) was not caught as %r; errors: %s" % (
                    rel, old, new, expect, errors))
    return failures


# -- schema ------------------------------------------------------------------------------------

def k8s_schema():
    """Validates deploy/k8s with kubernetes-validate. Returns a list of failures; prints SKIP
    and returns [] when the tool cannot be installed."""
    venv = os.path.join(BINARY_DIR, "k8s-validate-venv")
    tool = os.path.join(venv, "bin", "kubernetes-validate")
    stamp = os.path.join(venv, ".version")
    if not (os.path.exists(tool) and os.path.exists(stamp) and open(stamp).read() == K8S_VALIDATE_VERSION):
        index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
        try:
            urllib.request.urlopen(index + "/kubernetes-validate/", timeout=15).read(1)
        except Exception as e:  # noqa: BLE001
            print("SKIP schema step: cannot reach %s (%s); kubernetes-validate not installed" % (index, e))
            return []
        shutil.rmtree(venv, ignore_errors=True)
        r = subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True)
        if r.returncode != 0:
            print("SKIP schema step: %s -m venv failed: %s" % (sys.executable, r.stderr.strip()))
            return []
        r = subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "--disable-pip-version-check",
                            "kubernetes-validate==" + K8S_VALIDATE_VERSION], capture_output=True, text=True,
                           timeout=600)
        if r.returncode != 0:
            print("SKIP schema step: pip install kubernetes-validate failed:\n%s" % r.stderr.strip())
            return []
        with open(stamp, "w") as f:
            f.write(K8S_VALIDATE_VERSION)
    files = []
    for name in sorted(os.listdir(os.path.join(SOURCE_DIR, "deploy", "k8s"))):
        full = os.path.join(SOURCE_DIR, "deploy", "k8s", name)
        with open(full) as f:
            kinds = {d.get("kind") for d in yaml.safe_load_all(f) if d}
        if kinds & {"Kustomization", "ServiceMonitor"}:
            continue  # not core Kubernetes kinds: checked structurally above
        files.append(full)
    r = subprocess.run([tool, "--strict", "-k", K8S_VERSION] + files, capture_output=True, text=True)
    print(r.stdout.strip())
    if r.returncode != 0:
        return ["kubernetes-validate --strict -k %s failed:\n%s%s" % (K8S_VERSION, r.stdout, r.stderr)]
    return []


def main():
    failures = run_checks(SOURCE_DIR)
    failures += check_mutations()
    failures += k8s_schema()
    if failures:
        print("FAIL:\n- " + "\n- ".join(failures))
        return 1
    print("deploy files OK (%d mutations caught)" % len(MUTATIONS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
