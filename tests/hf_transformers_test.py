#!/usr/bin/env python3
"""HF export checked by Hugging Face transformers (issue 8).

Runs the real service: quantd with one local worker quantizes the bundled stories260K to 2 bits
(quip-sharp), `quantctl fetch` pulls it natively and with `--format hf`, and transformers'
LlamaForCausalLM loads the HF directory. Two comparisons on the first 64 evaluation tokens:
  1. transformers on the exported fp16 checkpoint == our forward pass on the same checkpoint
     (both compute in fp32 from the same fp16 weights: only summation order differs);
  2. transformers on the exported fp16 checkpoint ~= our forward pass on the native artifact
     (fp32 dequantized weights): the difference is fp16 weight rounding only.

transformers + torch come from PyPI (~5 GB with torch's CUDA wheels), so the test uses a cached
venv: $QUANTD_HF_VENV (default ~/.cache/quantd/hf-venv). Without one it exits 77 (CTest: skipped)
unless QUANTD_TEST_TRANSFORMERS=1, which creates it first.
"""
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from local_quantd import LocalQuantd, dirs, hf_venv_python, log, quantctl_eval  # noqa: E402


# Runs inside the venv: our logits files vs transformers on the HF directory.
COMPARE = r"""
import sys, numpy as np, torch, transformers
hf_dir, tokens_file, ours_hf, ours_native, t = sys.argv[1:6]
t = int(t)
tokens = np.fromfile(tokens_file, dtype='<u2')[:t].astype(np.int64)
model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
model.eval()
with torch.no_grad():
    ref = model(torch.from_numpy(tokens)[None, :]).logits[0].numpy()
vocab = ref.shape[1]
a = np.fromfile(ours_hf, dtype='<f4').reshape(t, vocab)
b = np.fromfile(ours_native, dtype='<f4').reshape(t, vocab)
d_hf = float(np.abs(a - ref).max())
d_native = float(np.abs(b - ref).max())
agree = float((a.argmax(1) == ref.argmax(1)).mean())
print(f"max|ours(hf fp16) - transformers| = {d_hf:.3g}; max|ours(native) - transformers| = "
      f"{d_native:.3g}; argmax agreement {agree:.3f}; logit range {float(np.abs(ref).max()):.3g}")
ok = d_hf <= 1e-3 and d_native <= 0.05 and agree == 1.0
sys.exit(0 if ok else 1)
"""


def main():
    src, bindir = dirs()
    py = hf_venv_python()
    tmp = tempfile.mkdtemp(prefix="quantd-hf-")
    ex = os.path.join(src, "examples")
    native, hf = os.path.join(tmp, "native"), os.path.join(tmp, "hf")
    try:
        with LocalQuantd(bindir, tmp, ex) as q:
            q.submit_stories260k(ex, "hf-export", "quip-sharp", "--bits", "2", calib_seqs=32)
            q.run("fetch", "hf-export", "-o", native)
            q.run("fetch", "hf-export", "-o", hf, "--format", "hf")
        tokens = os.path.join(ex, "tinystories/eval_stories_500_999.u16")
        t = 64
        for d, out in ((hf, "ours_hf.f32"), (native, "ours_native.f32")):
            r = quantctl_eval(bindir, d, tokens, t, os.path.join(tmp, out))
            if r.returncode != 0:
                log(r.stderr); return 1
        r = subprocess.run([py, "-c", COMPARE, hf, tokens, os.path.join(tmp, "ours_hf.f32"),
                            os.path.join(tmp, "ours_native.f32"), str(t)])
        log("PASS" if r.returncode == 0 else "FAIL")
        return r.returncode
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
