#!/usr/bin/env python3
"""quantd Python client: a small library and a CLI over quantd's gRPC API (quantd.v1).

Library:

    from quantd_client import Client
    with Client("127.0.0.1:7070") as c:
        job = c.submit("/models/llama", calib="/data/calib.u16", method="quip-sharp", bits=2,
                       name="llama-2bit")
        job = c.watch(job.id, on_event=lambda ev: print(ev.job.progress))
        version = c.fetch("llama-2bit", out_dir="out/llama-2bit")

Security (docs/reliability.md, "Authentication and TLS"): Client(addr, token=...) sends
"authorization: Bearer <token>" on every call (read_token_file() reads a token file with
quantctl's rules); tls_ca=FILE dials TLS and verifies the server with that CA bundle, and
tls_cert/tls_key add a client certificate for mutual TLS.

CLI (exit 0 success, 1 job failed/cancelled or request refused, 2 usage, 4 server unavailable;
the same codes as quantctl):

    python3 quantd_client.py [--addr HOST:PORT] [--token-file FILE] [--tls-ca FILE
        [--tls-cert FILE --tls-key FILE]] submit MODEL_DIR --calib FILE [--eval FILE]
        --method M --bits B --name NAME [--request-id ID] [--sequential]
        [--wait [--progress-interval S]] [--json]
    python3 quantd_client.py watch JOB [--json] [--progress-interval S]
    python3 quantd_client.py status JOB [--json]
    python3 quantd_client.py fetch NAME[@VERSION] -o DIR [--format native|gguf|gptq|compressed-tensors]
        [--json]

watch and submit --wait show quantctl's progress display (quantd_progress.py, docs/cli.md):
on a terminal one line redrawn in place, else a line per phase change and one every S seconds
(default 30); with --json on stderr, stdout then holding only the final job.

As with quantctl, the token comes from --token-file, else $QUANTD_TOKEN, and the TLS files
from --tls-ca/--tls-cert/--tls-key, else $QUANTD_TLS_CA/$QUANTD_TLS_CERT/$QUANTD_TLS_KEY.

Stubs: quantd_pb2 / quantd_pb2_grpc are generated from proto/quantd.proto with grpcio-tools
(never committed). `python3 quantd_client.py gen-stubs [DIR]` writes them; on import the module
looks in $QUANTD_STUBS_DIR, then in _gen/ next to this file, and generates them there when they
are missing and grpcio-tools is installed. $QUANTD_PROTO overrides the proto path (default
../../proto/quantd.proto relative to this file).

Errors: RPC failures raise grpc.RpcError (code() is the server's status: INVALID_ARGUMENT,
NOT_FOUND, UNAVAILABLE, ...; details() the server's message). PERMISSION_DENIED says which check
refused the call: a token not in quantd's file ("token rejected"), a scope the token lacks
('token "ci" lacks scope "submit" needed by /quantd.v1.QuantService/SubmitJob (it has: read)'),
a tenant ('"team a" is limited to models whose names start with "team-a."'), or an input path
outside quantd's --input_root; the CLI prints "CODE: details" and exits 1. A fetched file whose size or sha256 differs from the manifest
raises FetchError with code DATA_LOSS. Thread-safety: a Client may be shared by threads
(grpc channels are thread-safe); fetch() into the same directory from two threads is not safe.
"""

import argparse
import collections
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid

import grpc

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_PROTO = os.path.join(_HERE, "..", "..", "proto", "quantd.proto")
_CHUNK_RETRIES = 5


def generate_stubs(out_dir, proto=None):
    """Generates quantd_pb2.py and quantd_pb2_grpc.py into out_dir with grpcio-tools.

    Raises RuntimeError naming the proto file when protoc fails."""
    from grpc_tools import protoc  # grpcio-tools; only needed here

    proto = os.path.abspath(proto or os.environ.get("QUANTD_PROTO") or _DEFAULT_PROTO)
    os.makedirs(out_dir, exist_ok=True)
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main([
        "grpc_tools.protoc",
        "-I" + os.path.dirname(proto),
        "-I" + well_known,
        "--python_out=" + out_dir,
        "--grpc_python_out=" + out_dir,
        proto,
    ])
    if rc != 0:
        raise RuntimeError("protoc failed on %s (exit %d)" % (proto, rc))


def _load_stubs():
    dirs = [d for d in (os.environ.get("QUANTD_STUBS_DIR"), os.path.join(_HERE, "_gen")) if d]
    for d in dirs:
        if os.path.exists(os.path.join(d, "quantd_pb2_grpc.py")):
            break
    else:
        d = dirs[0]
        generate_stubs(d)
    if d not in sys.path:
        sys.path.insert(0, d)
    return importlib.import_module("quantd_pb2"), importlib.import_module("quantd_pb2_grpc")


pb, pb_grpc = _load_stubs()

TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


class FetchError(Exception):
    """A fetched file does not match the manifest (code DATA_LOSS) or a path is unsafe
    (code INVALID_ARGUMENT)."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def state_name(state):
    return pb.JobState.Name(state).replace("JOB_STATE_", "")


def _safe_relative(path):
    parts = path.split("/")
    return (path and not path.startswith("/") and "\\" not in path and "\0" not in path
            and all(p not in ("", ".", "..") for p in parts))


def _sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


MIN_TOKEN_LENGTH = 16


def read_token_file(path):
    """The first token of a quantd token file, with quantctl's rules: blank lines and '#'
    lines are skipped, a token is the line's first field (at least 16 printable ASCII
    characters), and the file must not be accessible to other users. Raises ValueError."""
    st = os.stat(path)
    if st.st_mode & 0o007:
        raise ValueError("token file %s is accessible to other users: chmod 600 %s" % (path, path))
    with open(path, encoding="ascii", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            token = line.split()[0]
            if len(token) < MIN_TOKEN_LENGTH or not all(33 <= ord(ch) < 127 for ch in token):
                raise ValueError("%s:%d: a token is at least %d printable ASCII characters"
                                 % (path, n, MIN_TOKEN_LENGTH))
            return token
    raise ValueError("token file %s holds no token" % path)


def _is_loopback(addr):
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds "authorization: Bearer <token>" to every call (over TLS and plaintext alike;
    grpc's call credentials refuse plaintext channels)."""

    def __init__(self, token):
        self._entry = ("authorization", "Bearer " + token)

    def _with_token(self, d):
        return _CallDetails(d.method, d.timeout, list(d.metadata or []) + [self._entry],
                            d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)


class Client:
    """Connection to one quantd coordinator (QuantService + RegistryService)."""

    def __init__(self, addr="127.0.0.1:7070", connect_timeout_s=5.0, token=None, tls_ca=None,
                 tls_cert=None, tls_key=None):
        """token: bearer token sent on every call. tls_ca: PEM CA bundle; dials TLS and
        verifies the server (the certificate must name the addr host). tls_cert + tls_key:
        client certificate for mutual TLS. Raises ValueError for an inconsistent combination,
        grpc.FutureTimeoutError when the server is not reachable (or refuses the handshake)
        within connect_timeout_s."""
        self.addr = addr
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("tls_cert and tls_key go together")
        if tls_cert and not tls_ca:
            raise ValueError("a client certificate needs tls_ca (mutual TLS is TLS)")
        options = [("grpc.max_receive_message_length", 16 << 20)]
        if tls_ca:
            def pem(path):
                with open(path, "rb") as f:
                    return f.read()
            creds = grpc.ssl_channel_credentials(
                root_certificates=pem(tls_ca),
                private_key=pem(tls_key) if tls_key else None,
                certificate_chain=pem(tls_cert) if tls_cert else None)
            self._raw = grpc.secure_channel(addr, creds, options=options)
        else:
            if token and not _is_loopback(addr):
                print("quantd_client: warning: sending a token in plaintext to %s; use tls_ca"
                      % addr, file=sys.stderr)
            self._raw = grpc.insecure_channel(addr, options=options)
        try:
            grpc.channel_ready_future(self._raw).result(timeout=connect_timeout_s)
        except grpc.FutureTimeoutError:
            self._raw.close()
            raise
        self._channel = (grpc.intercept_channel(self._raw, _BearerToken(token)) if token
                         else self._raw)
        self.jobs = pb_grpc.QuantServiceStub(self._channel)
        self.registry = pb_grpc.RegistryServiceStub(self._channel)

    def close(self):
        self._raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- jobs ---------------------------------------------------------------------------------

    def submit(self, model_dir, calib, method, bits, name, eval_path="", request_id="",
               calib_seq_len=0, max_calib_seqs=0, eval_context=0, calib_sampling="",
               calib_seed=0, start_token="", finetune=False, ft_epochs=0, ft_lr=0.0,
               ft_batch=0, ft_holdout=0, ft_patience=0, ft_e2e="", ft_e2e_epochs=0,
               ft_e2e_lr=0.0, ft_e2e_head=False, **spec):
        """Submits a job; paths are made absolute (the coordinator reads them on its host).
        `spec` takes further QuantSpec fields (seed, group_size, damp, token_weighting,
        sink_weight, ...). finetune=True adds fine-tuning after rounding (issue 27); ft_epochs,
        ft_lr, ft_batch, ft_holdout and ft_patience are its options as quantctl's --ft-* flags
        (0 = the server's default: 4 epochs, lr 3e-3, batch 2, 2 held out, patience 1); an ft_*
        value without finetune=True raises ValueError. ft_e2e ("on" | "off"; "" = the server's
        default, on), ft_e2e_epochs, ft_e2e_lr and ft_e2e_head are the end-to-end KL stage's, as
        --ft-e2e* (0 = default: 2 epochs, lr 1e-3); an e2e option with ft_e2e="off" raises
        ValueError. calib_sampling ("first" | "random"), calib_seed and start_token
        ("auto" | "none") choose the calibration sequences (docs/cli.md); "" is the server's
        default. Returns the Job; the same request_id returns the same job. Without request_id
        a random one is used. calib may be None or "" for rtn only (the job then captures no
        Hessians)."""
        ft = dict(epochs=ft_epochs, learning_rate=ft_lr, batch_sequences=ft_batch,
                  holdout_sequences=ft_holdout, patience=ft_patience, e2e=ft_e2e,
                  e2e_epochs=ft_e2e_epochs, e2e_learning_rate=ft_e2e_lr, e2e_head=ft_e2e_head)
        if ft_e2e not in ("", "on", "off"):
            raise ValueError("ft_e2e %r is not one of: on, off" % (ft_e2e,))
        if ft_e2e == "off" and (ft_e2e_epochs or ft_e2e_lr or ft_e2e_head):
            raise ValueError("ft_e2e_* options need ft_e2e on")
        if ft_e2e_epochs < 0:
            raise ValueError("ft_e2e_epochs %d is negative" % ft_e2e_epochs)
        if ft_e2e_lr and not 0 < ft_e2e_lr <= 1:
            raise ValueError("ft_e2e_lr %g is not in (0, 1]" % ft_e2e_lr)
        if finetune:
            spec["finetune"] = pb.FinetuneSpec(enabled=True, **ft)
        elif any(ft.values()):
            raise ValueError("ft_* options need finetune=True")
        req = pb.SubmitJobRequest(
            request_id=request_id or "pyclient-" + uuid.uuid4().hex,
            name=name,
            model_dir=os.path.abspath(model_dir),
            calib_path=os.path.abspath(calib) if calib else "",
            eval_path=os.path.abspath(eval_path) if eval_path else "",
            spec=pb.QuantSpec(method=method, bits=bits, **spec),
            calib_seq_len=calib_seq_len,
            max_calib_seqs=max_calib_seqs,
            eval_context=eval_context,
            calib_sampling=calib_sampling,
            calib_seed=calib_seed,
            start_token=start_token,
        )
        return self.jobs.SubmitJob(req).job

    def get_job(self, job_id):
        return self.jobs.GetJob(pb.GetJobRequest(id=job_id))

    def cancel(self, job_id):
        return self.jobs.CancelJob(pb.CancelJobRequest(id=job_id))

    def watch(self, job_id, on_event=None, reattach_s=120.0):
        """Streams WatchJob until the job is terminal and returns the final Job. If the stream
        breaks with UNAVAILABLE it re-attaches for up to reattach_s since the last event."""
        last_event = time.monotonic()
        while True:
            try:
                for ev in self.jobs.WatchJob(pb.WatchJobRequest(id=job_id)):
                    last_event = time.monotonic()
                    if on_event:
                        on_event(ev)
                    if ev.job.state in TERMINAL:
                        return ev.job
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                if time.monotonic() - last_event > reattach_s:
                    raise
                time.sleep(1.0)
                continue
            job = self.get_job(job_id)  # stream ended without a terminal event
            if job.state in TERMINAL:
                return job

    # -- registry -----------------------------------------------------------------------------

    def models(self, name=""):
        return list(self.registry.ListModels(pb.ListModelsRequest(name=name)).models)

    def delete_model(self, name, version):
        """Deletes one published version (version >= 1); returns what it was."""
        return self.registry.DeleteModel(pb.DeleteModelRequest(name=name, version=version))

    def get_model(self, name, version=0):
        return self.registry.GetModel(pb.GetModelRequest(name=name, version=version))

    def fetch(self, name, out_dir, version=0, on_file=None):
        """Downloads every file of NAME@VERSION (0 = latest) into out_dir and returns the
        ModelVersion. Each file goes to <path>.part, resumed from its size when present (also
        after a broken stream), then its size and sha256 are checked against the version's
        file list and it is renamed into place. A file already present with the right sha256 is
        skipped. manifest.json is written last. on_file(path, size, resumed_from, skipped)."""
        mv = self.get_model(name, version)
        for f in mv.files:
            if not _safe_relative(f.path) or f.path == "manifest.json":
                raise FetchError("INVALID_ARGUMENT", "unsafe artifact path from server: %r" % f.path)
        os.makedirs(out_dir, exist_ok=True)
        for f in mv.files:
            dest = os.path.join(out_dir, f.path)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if (os.path.exists(dest) and os.path.getsize(dest) == f.size
                    and _sha256_file(dest) == f.sha256.lower()):
                if on_file:
                    on_file(f.path, f.size, 0, True)
                continue
            part = dest + ".part"
            resumed_from = self._download(mv, f, part)
            size = os.path.getsize(part)
            digest = _sha256_file(part)
            if size != f.size or digest != f.sha256.lower():
                os.remove(part)
                raise FetchError("DATA_LOSS", "%s: got %d bytes with sha256 %s, the manifest says "
                                 "%d bytes, %s" % (f.path, size, digest, f.size, f.sha256))
            os.replace(part, dest)
            if on_file:
                on_file(f.path, f.size, resumed_from, False)
        tmp = os.path.join(out_dir, ".manifest.json.tmp")
        with open(tmp, "w") as out:
            out.write(mv.manifest_json)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, os.path.join(out_dir, "manifest.json"))
        return mv

    def fetch_export(self, name, out_dir, fmt, version=0, on_file=None, quantctl=None):
        """fetch() of an engine export (docs/formats/exports.md): `fmt` "gguf" writes
        out_dir/model.gguf, "gptq" and "compressed-tensors" a Hugging Face directory. The version's manifest is checked first: a version whose
        "export_formats" lacks the format raises FetchError FAILED_PRECONDITION before anything
        is downloaded. The native files go to out_dir/.quantd-native (resumable), then the
        export is written by `quantctl export` (one implementation of the format, in C++):
        `quantctl` is the argument, else $QUANTCTL, else quantctl on PATH. Returns the
        ModelVersion."""
        if fmt not in ("gguf", "gptq", "compressed-tensors"):
            raise ValueError("unknown export format %r (want gguf, gptq or compressed-tensors)" % fmt)
        mv = self.get_model(name, version)
        try:
            formats = json.loads(mv.manifest_json).get("export_formats", [])
        except ValueError:
            formats = []
        if not any(f == fmt or f.startswith(fmt + "-") for f in formats):
            raise FetchError("FAILED_PRECONDITION", "%s@%d cannot be exported to %s; this version "
                             "can be fetched as: %s" % (mv.name, mv.version, fmt,
                                                        ", ".join(["native", "hf"] + formats)))
        native = os.path.join(out_dir, ".quantd-native")
        mv = self.fetch(name, native, version=mv.version, on_file=on_file)
        exe = quantctl or os.environ.get("QUANTCTL") or shutil.which("quantctl")
        if not exe:
            raise FetchError("FAILED_PRECONDITION", "quantctl (the exporter) not found: pass "
                             "quantctl= or set $QUANTCTL")
        r = subprocess.run([exe, "export", native, "-o", out_dir, "--format", fmt],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise FetchError("INTERNAL", "quantctl export: " + (r.stderr.strip() or r.stdout))
        shutil.rmtree(native, ignore_errors=True)
        return mv

    def _download(self, mv, f, part):
        offset = os.path.getsize(part) if os.path.exists(part) else 0
        if offset > f.size:  # not ours to trust: start over
            os.remove(part)
            offset = 0
        resumed_from = offset
        failures = 0
        with open(part, "ab") as out:
            while offset < f.size:
                start = offset
                req = pb.FetchArtifactRequest(name=mv.name, version=mv.version, path=f.path,
                                              offset=offset)
                try:
                    for chunk in self.registry.FetchArtifact(req):
                        if chunk.offset != offset or len(chunk.data) > f.size - offset:
                            out.close()
                            os.remove(part)
                            raise FetchError("DATA_LOSS", "%s: server sent %d bytes at offset %d, "
                                             "expected offset %d of %d" % (
                                                 f.path, len(chunk.data), chunk.offset, offset,
                                                 f.size))
                        out.write(chunk.data)
                        offset += len(chunk.data)
                    if offset != f.size:
                        out.close()
                        os.remove(part)
                        raise FetchError("DATA_LOSS", "%s: stream ended at byte %d of %d" % (
                            f.path, offset, f.size))
                except grpc.RpcError as e:
                    if e.code() not in (grpc.StatusCode.UNAVAILABLE,
                                        grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    out.flush()
                    failures = 0 if offset > start else failures + 1
                    if failures > _CHUNK_RETRIES:
                        raise
                    time.sleep(min(0.5 * 2 ** max(failures - 1, 0), 8.0))
            out.flush()
            os.fsync(out.fileno())
        return resumed_from


# -- CLI -------------------------------------------------------------------------------------

def _job_dict(job):
    return {
        "id": job.id, "name": job.name, "state": pb.JobState.Name(job.state), "phase": job.phase,
        "tasks_done": job.tasks_done, "tasks_total": job.tasks_total, "progress": job.progress,
        "version": job.version, "fp_ppl": job.fp_ppl, "quant_ppl": job.quant_ppl,
        "mean_proxy_loss": job.mean_proxy_loss, "error": job.error,
        "method": job.spec.method, "bits": job.spec.bits,
        "finetune_blocks": job.finetune_blocks, "finetune_blocks_done": job.finetune_blocks_done,
        "finetune_losses": [{"layer": b.layer, "heldout_before": b.heldout_before,
                             "heldout_best": b.heldout_best, "epochs_run": b.epochs_run}
                            for b in job.finetune_losses],
        "finetune_e2e": ({"heldout_kl_before": job.finetune_e2e.heldout_before,
                          "heldout_kl_curve": list(job.finetune_e2e.heldout_curve),
                          "heldout_kl_best": job.finetune_e2e.heldout_best,
                          "epochs_run": job.finetune_e2e.epochs_run,
                          "done": job.finetune_e2e.done}
                         if job.HasField("finetune_e2e") else None),
    }


def _phase_text(job):
    """The phase, with the layer stage of a sequential job ("hessian, layer 3/30"), the block
    being fine-tuned ("finetune, block 3/30 (block 1 held-out 0.0291 -> 0.0234)") or the KL
    stage ("finetune e2e (held-out KL 0.3508 -> 0.3229, epoch 1/2)")."""
    if (job.phase == "finetune" and job.HasField("finetune_e2e") and
            job.finetune_blocks_done >= job.finetune_blocks):
        e = job.finetune_e2e
        s = job.phase + " e2e"
        if e.done or e.heldout_curve:
            s += " (held-out KL %.4g -> %.4g, epoch %d/%d)" % (
                e.heldout_before, e.heldout_best if e.done else e.heldout_curve[-1], e.epochs_run,
                job.spec.finetune.e2e_epochs)
        return s
    if job.phase == "finetune" and job.finetune_blocks > 0:
        s = "%s, block %d/%d" % (job.phase, min(job.finetune_blocks_done + 1, job.finetune_blocks),
                                 job.finetune_blocks)
        if job.finetune_losses:
            b = job.finetune_losses[-1]
            s += " (block %d held-out %.4g -> %.4g)" % (b.layer, b.heldout_before, b.heldout_best)
        return s
    if job.layer_stage > 0:
        return "%s, layer %d/%d" % (job.phase, job.layer_stage, job.layer_stages)
    return job.phase


def _print_job_line(job):
    print("%s %s %s %d/%d %.1f%%" % (job.id, state_name(job.state), _phase_text(job),
                                     job.tasks_done, job.tasks_total, 100.0 * job.progress),
          flush=True)


def _finish(job, as_json):
    if as_json:
        print(json.dumps(_job_dict(job)))
    if job.state == pb.JOB_STATE_SUCCEEDED:
        if not as_json:  # quantctl's summary line (client/output.cc FinalJobLine)
            ppl = ("perplexity fp %.4f -> quantized %.4f" % (job.fp_ppl, job.quant_ppl)
                   if job.fp_ppl > 0 or job.quant_ppl > 0 else "no perplexity evaluation")
            print("job %s SUCCEEDED: %s version %d, %s" % (job.id, job.name, job.version, ppl))
        return 0
    print("job %s %s: %s" % (job.id, state_name(job.state), job.error), file=sys.stderr)
    return 1


def _watch(client, job_id, as_json, interval_s=30.0):
    """Watches to the end with quantctl's display (quantd_progress.py) on the human stream:
    stdout, or stderr with --json (stdout then holds only the JSON document)."""
    import shutil
    import threading

    import quantd_progress

    human = sys.stderr if as_json else sys.stdout
    tty = human.isatty()
    columns = shutil.get_terminal_size((80, 24)).columns if tty else 80
    progress = quantd_progress.ProgressRenderer(tty, time.monotonic(), interval_s, columns)
    lock = threading.Lock()
    done = threading.Event()

    def write(text):
        if text:
            human.write(text)
            human.flush()

    def tick():
        while not done.wait(1.0):
            with lock:
                write(progress.on_tick(time.monotonic()))

    def on_event(ev):
        with lock:
            write(progress.on_job(ev.job, ev.message, time.monotonic()))

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        job = client.watch(job_id, on_event=on_event)
    finally:
        done.set()
        ticker.join()
        with lock:
            write(progress.finish(time.monotonic()))
    return _finish(job, as_json)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="quantd_client.py", description=__doc__.split("\n")[0])
    ap.add_argument("--addr", default=os.environ.get("QUANTD_ADDR", "127.0.0.1:7070"))
    ap.add_argument("--token-file", default="",
                    help="send the file's first token (else $QUANTD_TOKEN)")
    ap.add_argument("--tls-ca", default=os.environ.get("QUANTD_TLS_CA", ""),
                    help="dial TLS, verifying the server with this CA bundle")
    ap.add_argument("--tls-cert", default=os.environ.get("QUANTD_TLS_CERT", ""),
                    help="client certificate for mutual TLS (with --tls-key)")
    ap.add_argument("--tls-key", default=os.environ.get("QUANTD_TLS_KEY", ""))
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit", help="submit a quantization job")
    s.add_argument("model_dir")
    s.add_argument("--calib", required=True)
    s.add_argument("--eval", default="")
    s.add_argument("--method", required=True)
    s.add_argument("--bits", type=int, default=0,
                   help="required unless --grid gives them")
    s.add_argument("--grid", default="",
                   help="q4_0|q4_1|q5_0|q5_1|q8_0|gptq-sym|gptq-asym: an export format's grid")
    s.add_argument("--group-size", type=int, default=0)
    s.add_argument("--avg-bits", type=float, default=0,
                   help="a bit budget instead of --bits: 2/3/4 bits per matrix, this average")
    s.add_argument("--budget-weight", default="", help="rel (default) | abs")
    s.add_argument("--name", required=True)
    s.add_argument("--request-id", default="")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--max-calib-seqs", type=int, default=0)
    s.add_argument("--finetune", action="store_true",
                   help="fine-tune each block after rounding (docs/cli.md)")
    s.add_argument("--ft-epochs", type=int, default=0)
    s.add_argument("--ft-lr", type=float, default=0.0)
    s.add_argument("--ft-batch", type=int, default=0)
    s.add_argument("--ft-holdout", type=int, default=0)
    s.add_argument("--ft-patience", type=int, default=0)
    s.add_argument("--ft-e2e", default="", choices=("", "on", "off"),
                   help="the end-to-end KL stage after the blocks (default on)")
    s.add_argument("--ft-e2e-epochs", type=int, default=0)
    s.add_argument("--ft-e2e-lr", type=float, default=0.0)
    s.add_argument("--ft-e2e-head", action="store_true",
                   help="also tune the head in the KL stage (untied heads only)")
    s.add_argument("--sequential", action="store_true",
                   help="one Hessian + quantize stage per layer (GPTQ's layer-by-layer order)")
    s.add_argument("--wait", action="store_true")
    s.add_argument("--json", action="store_true")
    for name in ("watch", "status", "cancel"):
        p = sub.add_parser(name, help=name + " a job")
        p.add_argument("job")
        p.add_argument("--json", action="store_true")
    for p in (s, sub.choices["watch"]):
        p.add_argument("--progress-interval", type=int, default=30, metavar="S",
                       help="without a terminal, a progress line at least every S seconds")
    f = sub.add_parser("fetch", help="download a published model, verifying sha256")
    f.add_argument("model", help="NAME or NAME@VERSION")
    f.add_argument("-o", "--out", required=True)
    f.add_argument("--format", default="native", choices=("native", "gguf", "gptq", "compressed-tensors"),
                   help="gguf: DIR/model.gguf for llama.cpp; gptq: a GPTQ checkpoint "
                        "(transformers + gptqmodel, vLLM, TGI); compressed-tensors: a vLLM "
                        "checkpoint (all run `quantctl export`)")
    f.add_argument("--json", action="store_true")
    g = sub.add_parser("gen-stubs", help="generate quantd_pb2*.py from proto/quantd.proto")
    g.add_argument("dir", nargs="?", default=os.path.join(_HERE, "_gen"))
    args = ap.parse_args(argv)
    if getattr(args, "progress_interval", 1) < 1:
        ap.error("--progress-interval must be >= 1")
    if args.cmd == "submit" and not args.bits and not args.grid and not args.avg_bits:
        ap.error("submit: --bits is required (unless --grid or --avg-bits gives it)")

    if args.cmd == "gen-stubs":
        generate_stubs(args.dir)
        return 0
    try:
        token = read_token_file(args.token_file) if args.token_file else os.environ.get(
            "QUANTD_TOKEN", "")
        client = Client(args.addr, token=token or None, tls_ca=args.tls_ca or None,
                        tls_cert=args.tls_cert or None, tls_key=args.tls_key or None)
    except (ValueError, OSError) as e:
        print("quantd_client.py: %s" % e, file=sys.stderr)
        return 2
    except grpc.FutureTimeoutError:
        print("quantd at %s is unavailable (or the TLS handshake failed)" % args.addr,
              file=sys.stderr)
        return 4
    try:
        if args.cmd == "submit":
            job = client.submit(args.model_dir, calib=args.calib, eval_path=args.eval,
                                method=args.method, bits=args.bits, name=args.name,
                                request_id=args.request_id, seed=args.seed,
                                max_calib_seqs=args.max_calib_seqs,
                                sequential=args.sequential, grid=args.grid,
                                group_size=args.group_size, avg_bits=args.avg_bits,
                                budget_weight=args.budget_weight, finetune=args.finetune,
                                ft_epochs=args.ft_epochs, ft_lr=args.ft_lr,
                                ft_batch=args.ft_batch, ft_holdout=args.ft_holdout,
                                ft_patience=args.ft_patience, ft_e2e=args.ft_e2e,
                                ft_e2e_epochs=args.ft_e2e_epochs, ft_e2e_lr=args.ft_e2e_lr,
                                ft_e2e_head=args.ft_e2e_head)
            if not args.wait:
                print(json.dumps(_job_dict(job)) if args.json else job.id)
                return 0
            print(job.id, file=sys.stderr if args.json else sys.stdout, flush=True)
            return _watch(client, job.id, args.json, args.progress_interval)
        if args.cmd == "watch":
            return _watch(client, args.job, args.json, args.progress_interval)
        if args.cmd in ("status", "cancel"):
            job = client.get_job(args.job) if args.cmd == "status" else client.cancel(args.job)
            if args.json:
                print(json.dumps(_job_dict(job)))
            else:
                _print_job_line(job)
            return 0
        if args.cmd == "fetch":
            name, _, version = args.model.partition("@")
            if version and not version.isdigit():
                print("bad version in %r" % args.model, file=sys.stderr)
                return 2

            def on_file(path, size, resumed_from, skipped):
                if not args.json:
                    how = "present" if skipped else (
                        "resumed at %d" % resumed_from if resumed_from else "downloaded")
                    print("%s %d bytes %s" % (path, size, how), flush=True)

            if args.format == "native":
                mv = client.fetch(name, args.out, version=int(version or 0), on_file=on_file)
            else:
                mv = client.fetch_export(name, args.out, args.format, version=int(version or 0),
                                         on_file=on_file)
            if args.json:
                print(json.dumps({"name": mv.name, "version": mv.version, "dir": args.out,
                                  "files": [{"path": f.path, "size": f.size, "sha256": f.sha256}
                                            for f in mv.files]}))
            else:
                print("fetched %s version %d into %s" % (mv.name, mv.version, args.out))
            return 0
    except grpc.RpcError as e:
        print("%s: %s" % (e.code().name, e.details()), file=sys.stderr)
        return 4 if e.code() == grpc.StatusCode.UNAVAILABLE else 1
    except FetchError as e:
        print("%s: %s" % (e.code, e), file=sys.stderr)
        return 1
    finally:
        client.close()
    return 2


if __name__ == "__main__":
    sys.exit(main())
