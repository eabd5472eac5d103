#!/usr/bin/env python3
"""Every model family quantd runs, checked against transformers itself (issue 23).

For each family of tests/fixtures/make_family_fixtures.py (llama3, mistral, qwen2, qwen3, gemma2,
gemma3, phi3: its fused qkv_proj / gate_up_proj are quantized and exported as the fused matrices)
a tiny random model is written with the venv's transformers, then, with
rel = max|ours - transformers| / max|transformers logit| <= 1e-4:
  1. `quantctl eval --logits-out` (the layer-streamed forward) on the directory vs transformers;
  2. through the service: a gptq 4-bit job, `quantctl fetch --format hf`; the export's
     config.json loads in transformers (AutoModelForCausalLM) as the same class as the source,
     and its logits equal `quantctl eval` on the export;
  3. a quarot job on gemma2 is refused at submit with INVALID_ARGUMENT giving the reason, and the
     daemon keeps serving (the next family's job runs).
Uses the venv of hf_transformers_test.py and skips (exit 77) like it when there is none, or when
its transformers is older than 5.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from local_quantd import (LocalQuantd, dirs, hf_venv_python, log,  # noqa: E402
                          logits_compare_script, quantctl_eval, require_transformers5,
                          verdict, write_calib)

FAMILIES = ("gemma2", "gemma3", "llama3", "mistral", "phi3", "qwen2", "qwen3")
TOL = 1e-4

# Runs inside the venv: transformers' logits on HF_DIR vs ours; prints the class it loaded.
COMPARE = logits_compare_script(
    'transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, '
    'attn_implementation="eager")',
    "class {type(model).__name__} rel {rel:.3g}")


def main():
    src, bindir = dirs()
    py = hf_venv_python()
    require_transformers5(py, "; the fixtures need transformers >= 5")
    daemon = LocalQuantd(bindir, prefix="quantd-families-")
    tmp = daemon.tmp
    failures = []

    def check(what, d, tokens, want_class):
        out = os.path.join(tmp, what.replace(" ", "_").replace(",", "") + ".f32")
        r = quantctl_eval(bindir, d, tokens, 20, out)
        if r.returncode != 0:
            failures.append(f"{what}: quantctl eval failed: {r.stderr.strip()}")
            return
        c = subprocess.run([py, "-c", COMPARE, d, tokens, out, str(TOL)], capture_output=True, text=True)
        log(f"{what}: {c.stdout.rstrip()}")
        if c.returncode != 0:
            failures.append(f"{what}: {c.stdout}{c.stderr[-2000:]}")
        elif f"class {want_class} " not in c.stdout:
            failures.append(f"{what}: transformers loaded {c.stdout.split()[1]}, want {want_class}")

    try:
        r = subprocess.run([py, os.path.join(src, "tests/fixtures/make_family_fixtures.py"),
                            tmp + "/models"], capture_output=True, text=True)
        if r.returncode != 0:
            failures.append(f"make_family_fixtures: {r.stderr[-2000:]}")
            return 1
        if not daemon.start():
            failures.append("quantd did not start")
            return 1
        calib = os.path.join(tmp, "calib.u16")
        write_calib(calib, 96, 1024)  # 16 sequences of 64

        def submit(model, name, method, bits):
            return daemon.quantctl("submit", model, "--calib", calib, "--method", method, "--bits",
                                   str(bits), "--name", name, "--calib-seq-len", "64",
                                   "--eval-context", "64", "--wait")

        for fam in FAMILIES:
            model = os.path.join(tmp, "models", fam)
            tokens = os.path.join(model, "tokens.u16")
            arch = json.load(open(os.path.join(model, "config.json")))["architectures"][0]
            check(f"{fam} fp", model, tokens, arch)
            if fam == "gemma2":
                r = submit(model, "fam-gemma2-quarot", "quarot", 4)
                ok = r.returncode != 0 and "INVALID_ARGUMENT" in r.stderr and "post_attention_layernorm" in r.stderr
                log(f"gemma2 quarot refused at submit: {ok} ({r.stderr.strip()[:200]})")
                if not ok:
                    failures.append(f"gemma2 quarot not refused: exit {r.returncode} {r.stdout}{r.stderr}")
            r = submit(model, f"fam-{fam}", "gptq", 4)
            hf = os.path.join(tmp, "export-" + fam)
            if r.returncode == 0:
                r = daemon.quantctl("fetch", f"fam-{fam}", "-o", hf, "--format", "hf")
            if r.returncode != 0:
                failures.append(f"{fam} gptq 4-bit submit/fetch: {r.stdout}{r.stderr}")
                continue
            check(f"{fam} gptq 4-bit via the service, HF export", hf, tokens, arch)
    finally:
        daemon.close()
    return verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
