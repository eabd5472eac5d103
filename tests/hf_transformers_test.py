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
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77


def log(*a):
    print(*a, flush=True)


def venv_python():
    venv = os.environ.get("QUANTD_HF_VENV", os.path.expanduser("~/.cache/quantd/hf-venv"))
    py = os.path.join(venv, "bin", "python")
    check = [py, "-c", "import torch, transformers, numpy"]
    if os.path.exists(py) and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    if os.environ.get("QUANTD_TEST_TRANSFORMERS") != "1":
        log(f"SKIP: no venv with torch+transformers at {venv}; set QUANTD_TEST_TRANSFORMERS=1 to "
            "create it (pip, about 5 GB)")
        sys.exit(SKIP)
    r = subprocess.run(["/usr/bin/python3", "-m", "venv", venv])
    if r.returncode == 0:
        r = subprocess.run([py, "-m", "pip", "install", "-q", "torch", "transformers", "safetensors",
                            "numpy"])
    if r.returncode != 0 or subprocess.run(check).returncode != 0:
        log("SKIP: could not install torch+transformers from PyPI")
        sys.exit(SKIP)
    return py


def start_quantd(bindir, tmp, input_root):
    """quantd with one local worker on a free loopback port, reading job inputs only under
    `input_root`; returns (process, address or None)."""
    port_file = os.path.join(tmp, "port")
    daemon = subprocess.Popen(
        [os.path.join(bindir, "quantd"), "--listen=127.0.0.1:0", "--metrics_listen=",
         f"--data_dir={tmp}/var", f"--port_file={port_file}", "--local_workers=1",
         f"--input_root={input_root}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "quantd.log"), "w"))
    for _ in range(300):
        if os.path.exists(port_file) or daemon.poll() is not None:
            break
        time.sleep(0.1)
    if not os.path.exists(port_file):
        return daemon, None
    return daemon, "127.0.0.1:" + open(port_file).read().strip()


def stop_quantd(daemon):
    if daemon is not None and daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            daemon.kill()


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
    src = os.environ.get("QUANTD_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    bindir = os.environ.get("QUANTD_BINARY_DIR", os.path.join(src, "build"))
    py = venv_python()
    tmp = tempfile.mkdtemp(prefix="quantd-hf-")
    daemon = None
    try:
        daemon, addr = start_quantd(bindir, tmp, os.path.join(src, "examples"))
        if addr is None:
            log("FAIL: quantd did not start"); return 1
        quantctl = os.path.join(bindir, "quantctl")
        ex = os.path.join(src, "examples")
        def run(*args):
            r = subprocess.run([quantctl, "--addr", addr, *args], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"quantctl {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
            return r.stdout
        run("submit", os.path.join(ex, "stories260K"), "--calib",
            os.path.join(ex, "tinystories/calib_stories_0_499.u16"), "--method", "quip-sharp",
            "--bits", "2", "--name", "hf-export", "--max-calib-seqs", "32", "--wait")
        native, hf = os.path.join(tmp, "native"), os.path.join(tmp, "hf")
        run("fetch", "hf-export", "-o", native)
        run("fetch", "hf-export", "-o", hf, "--format", "hf")
        tokens = os.path.join(ex, "tinystories/eval_stories_500_999.u16")
        t = 64
        for d, out in ((hf, "ours_hf.f32"), (native, "ours_native.f32")):
            r = subprocess.run([quantctl, "eval", d, "--data", tokens, "--context", str(t),
                                "--logits-out", os.path.join(tmp, out)], capture_output=True, text=True)
            if r.returncode != 0:
                log(r.stderr); return 1
        r = subprocess.run([py, "-c", COMPARE, hf, tokens, os.path.join(tmp, "ours_hf.f32"),
                            os.path.join(tmp, "ours_native.f32"), str(t)])
        log("PASS" if r.returncode == 0 else "FAIL")
        return r.returncode
    finally:
        stop_quantd(daemon)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
