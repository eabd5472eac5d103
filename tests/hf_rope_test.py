#!/usr/bin/env python3
"""RoPE settings of transformers 5 config.json files, checked against transformers itself (issue 19).

transformers >= 5 writes RoPE as "rope_parameters": {"rope_type", "rope_theta", ...}; older versions
wrote top-level "rope_theta" and "rope_scaling". For each rope type quantd implements (llama3, linear,
default, all with rope_theta 500000), tests/fixtures/make_rope_fixture.py writes a tiny random
LlamaForCausalLM with the venv's transformers (and yarn, dynamic with factor 4). Checks, on 64 tokens, with
rel = max|ours - transformers| / max|transformers logit| <= 1e-4:
  1. `quantctl eval --logits-out` on the directory vs transformers on it;
  2. the same with config.json rewritten in the older layout (which transformers 5 also reads);
  3. through the service: quantd quantizes the llama3 model (rtn, 8 bits), `quantctl fetch --format
     hf` writes config.json still in the rope_parameters layout (no rope_theta, rope_scaling or
     torch_dtype added; "dtype" updated), and transformers on that export vs quantctl eval on it;
  4. a config with rope_type "proportional" (not implemented) is refused by quantctl eval, by name.
Uses the venv of hf_transformers_test.py and skips (exit 77) like it when there is none, or when
its transformers is older than 5 (then it cannot write the rope_parameters layout).
"""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from local_quantd import (LocalQuantd, dirs, hf_venv_python, log,  # noqa: E402
                          logits_compare_script, quantctl_eval, require_transformers5,
                          verdict, write_calib)

T = 64
TOL = 1e-4

# Runs inside the venv: transformers' logits on MODEL_DIR vs ours; prints the rope it read.
COMPARE = logits_compare_script(
    "transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)",
    "  rope {model.config.rope_parameters}: rel {rel:.3g}")


def to_old_layout(src, dst):
    """Copies model dir `src` to `dst` with config.json in the pre-transformers-5 layout."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "config.json")
    c = json.load(open(path))
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp.pop("rope_theta")
    c["rope_scaling"] = rp if rp.get("rope_type", "default") != "default" else None
    c["torch_dtype"] = c.pop("dtype")
    json.dump(c, open(path, "w"), indent=2)


def main():
    src, bindir = dirs()
    py = hf_venv_python()
    require_transformers5(py, ", which writes the old config layout; need transformers >= 5 "
                          "(pip install 'transformers>=5' into it)")
    daemon = LocalQuantd(bindir, prefix="quantd-rope-")  # the model and calib live under tmp
    tmp = daemon.tmp
    failures = []

    def eval_logits(d, out):
        return quantctl_eval(bindir, d, os.path.join(d, "tokens.u16"), T, out)

    def check(what, d):
        out = os.path.join(tmp, what.replace(" ", "_") + ".f32")
        r = eval_logits(d, out)
        if r.returncode != 0:
            failures.append(f"{what}: quantctl eval failed: {r.stderr.strip()}")
            return
        c = subprocess.run([py, "-c", COMPARE, d, os.path.join(d, "tokens.u16"), out, str(TOL)],
                           capture_output=True, text=True)
        log(f"{what}:{c.stdout.rstrip()}")
        if c.returncode != 0:
            failures.append(f"{what}: {c.stdout}{c.stderr[-2000:]}")

    try:
        for rope in ("llama3", "linear", "default", "yarn", "dynamic"):
            d = os.path.join(tmp, rope)
            r = subprocess.run([py, os.path.join(src, "tests/fixtures/make_rope_fixture.py"), d,
                                "--rope", rope, "--tokens", str(T)], capture_output=True, text=True)
            if r.returncode != 0:
                failures.append(f"make_rope_fixture --rope {rope}: {r.stderr[-2000:]}")
                continue
            check(f"{rope} (rope_parameters)", d)
            to_old_layout(d, d + "_v4")
            check(f"{rope} (rope_theta + rope_scaling)", d + "_v4")

        # 4. Not implemented: refused by name.
        bad = os.path.join(tmp, "proportional")
        shutil.copytree(os.path.join(tmp, "default"), bad)
        c = json.load(open(os.path.join(bad, "config.json")))
        c["rope_parameters"] = {"rope_type": "proportional", "rope_theta": 500000.0}
        json.dump(c, open(os.path.join(bad, "config.json"), "w"))
        r = eval_logits(bad, os.path.join(tmp, "proportional.f32"))
        ok = r.returncode != 0 and "INVALID_ARGUMENT" in r.stderr and '"proportional"' in r.stderr
        log(f"proportional refused: {ok} ({r.stderr.strip()})")
        if not ok:
            failures.append(f"proportional config not refused by name: exit {r.returncode} {r.stderr}")

        # 3. Through the service, and the export keeps the user's layout.
        if not daemon.start():
            failures.append("quantd did not start")
            return 1
        model = os.path.join(tmp, "llama3")
        calib = os.path.join(tmp, "calib.u16")
        write_calib(calib, 128, 4096)  # 16 sequences of 256
        r = daemon.quantctl("submit", model, "--calib", calib, "--method", "rtn", "--bits", "8",
                            "--name", "rope-llama3", "--calib-seq-len", "128", "--eval-context",
                            "128", "--wait")
        hf = os.path.join(tmp, "export")
        if r.returncode == 0:
            r = daemon.quantctl("fetch", "rope-llama3", "-o", hf, "--format", "hf")
        if r.returncode != 0:
            failures.append(f"submit/fetch: {r.stdout}{r.stderr}")
        else:
            shutil.copy(os.path.join(model, "tokens.u16"), hf)
            src_cfg = json.load(open(os.path.join(model, "config.json")))
            out_cfg = json.load(open(os.path.join(hf, "config.json")))
            want = dict(src_cfg, dtype="float16")
            log(f"export config.json keeps the rope_parameters layout: {out_cfg == want}")
            if out_cfg != want:
                failures.append(f"export config.json changed: {json.dumps(out_cfg)} != {json.dumps(want)}")
            check("llama3 via the service, rtn 8-bit, fp16 HF export", hf)
    finally:
        daemon.close()
    return verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
