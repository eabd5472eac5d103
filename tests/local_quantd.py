"""What the optional tier's Python tests share (stdlib only): the directories, the venv look-up,
the skip convention, a throw-away quantd with local workers, and the PASS/FAIL verdict.

    src, bindir = dirs()
    py = hf_venv_python()             # or venv_python([...], "gguf, numpy") or skip("...")
    with LocalQuantd(bindir, tmp, input_root=examples_dir, workers=1) as q:
        q.quantctl("models")          # CompletedProcess; q.addr is "127.0.0.1:PORT"
        q.run("models", name)         # the same, RuntimeError unless it exits 0 (expect=N)
    return verdict(failures)

The daemon listens on a free port (written to TMP/port), keeps its data in TMP/var, reads job
inputs only under `input_root` (quantd --input_root) and logs to TMP/quantd.log; it is stopped
with SIGTERM (SIGKILL after 20 s) on exit, and TMP removed when LocalQuantd made it (no `tmp`
given). A test that wants its earlier failures reported when the daemon does not start calls
start() (False then) and close() itself instead of `with`.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

# CTest's SKIP_RETURN_CODE for these tests (tests/CMakeLists.txt, quantd_py_e2e_test): a missing
# venv or engine is a visible skip, never a pass.
SKIP = 77

# Where the venvs and engines of the optional tier live (as in bench/gguf_llama_cpp.sh).
CACHE = os.environ.get("QUANTD_CACHE", os.path.expanduser("~/.cache/quantd"))


def log(*a):
    print(*a, flush=True)


def skip(why):
    """Prints SKIP: `why` and exits with SKIP (CTest reports the test as skipped)."""
    log("SKIP: " + why)
    sys.exit(SKIP)


def dirs():
    """(source dir, build dir): $QUANTD_SOURCE_DIR and $QUANTD_BINARY_DIR as CTest sets them, else
    this checkout and its build/."""
    src = os.environ.get("QUANTD_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return src, os.environ.get("QUANTD_BINARY_DIR", os.path.join(src, "build"))


def venv_python(venvs, imports):
    """The python of the first venv in `venvs` (empty entries are passed over) that imports every
    module of `imports` ("a, b"), else None."""
    for v in venvs:
        py = os.path.join(v, "bin", "python") if v else ""
        if py and os.path.exists(py) and subprocess.run(
                [py, "-c", "import " + imports], capture_output=True).returncode == 0:
            return py
    return None


def hf_venv():
    """The torch + transformers venv the HF tests share: $QUANTD_HF_VENV, default CACHE/hf-venv."""
    return os.environ.get("QUANTD_HF_VENV", os.path.join(CACHE, "hf-venv"))


def hf_venv_python():
    """The python of hf_venv() with torch + transformers + numpy. Without one: skips, unless
    QUANTD_TEST_TRANSFORMERS=1, which creates it first (pip, about 5 GB with torch's CUDA wheels)."""
    venv = hf_venv()
    imports = "torch, transformers, numpy"
    py = venv_python([venv], imports)
    if py:
        return py
    if os.environ.get("QUANTD_TEST_TRANSFORMERS") != "1":
        skip(f"no venv with torch+transformers at {venv}; set QUANTD_TEST_TRANSFORMERS=1 to "
             "create it (pip, about 5 GB)")
    py = os.path.join(venv, "bin", "python")
    r = subprocess.run(["/usr/bin/python3", "-m", "venv", venv])
    if r.returncode == 0:
        r = subprocess.run([py, "-m", "pip", "install", "-q", "torch", "transformers", "safetensors",
                            "numpy"])
    if r.returncode != 0 or subprocess.run([py, "-c", "import " + imports]).returncode != 0:
        skip("could not install torch+transformers from PyPI")
    return py


def require_transformers5(py, why):
    """Skips (printing the version and `why`) when the venv's transformers is older than 5."""
    ver = subprocess.run([py, "-c", "import transformers; print(transformers.__version__)"],
                         capture_output=True, text=True).stdout.strip()
    if int(ver.split(".")[0]) < 5:
        skip(f"the venv has transformers {ver}{why}")
    log(f"transformers {ver}")


def quantctl_eval(bindir, model_dir, tokens, context, logits_out):
    """`quantctl eval MODEL --data TOKENS --context C --logits-out OUT` (no daemon needed)."""
    return subprocess.run([os.path.join(bindir, "quantctl"), "eval", model_dir, "--data", tokens,
                           "--context", str(context), "--logits-out", logits_out],
                          capture_output=True, text=True)


def write_calib(path, vocab, count):
    """`count` uint16 little-endian token ids below `vocab` in a fixed pattern: calibration text
    for the tiny random fixtures."""
    with open(path, "wb") as f:
        f.write(b"".join(((i * 37 + i // 7) % vocab).to_bytes(2, "little") for i in range(count)))


def verdict(failures):
    """Logs each failure and PASS or FAIL; the exit status (0 when there are none)."""
    for f in failures:
        log("FAIL:", f)
    log("PASS" if not failures else "FAIL")
    return 0 if not failures else 1


# Runs inside a venv with numpy (prepended to the scripts that need it): reads an F32
# safetensors file (a `quantctl fetch --format hf --dtype f32` export) into numpy arrays.
NP_SAFETENSORS = r"""
import json, struct
import numpy as np

def safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in head.items():
        if k == "__metadata__": continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype="<f4").reshape(v["shape"])
    return out
"""


def logits_compare_script(load, report):
    """A script for the HF venv, run as `py -c SCRIPT HF_DIR TOKENS OURS TOL`: transformers' logits
    of the model that the expression `load` makes of `hf_dir`, on the uint16 TOKENS, against
    ours (OURS, a [T][vocab] f32 file); prints the f-string body `report` (it may use `model` and
    rel = max|ours - transformers| / max|transformers logit|) and exits 1 when rel > TOL."""
    return r"""
import sys, numpy as np, torch, transformers
hf_dir, tokens_file, ours_file, tol = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
tokens = np.fromfile(tokens_file, dtype='<u2').astype(np.int64)
model = (%s).eval()
with torch.no_grad():
    ref = model(torch.from_numpy(tokens)[None, :]).logits[0].numpy()
ours = np.fromfile(ours_file, dtype='<f4').reshape(ref.shape)
rel = float(np.abs(ours - ref).max()) / float(np.abs(ref).max())
print(f"%s")
sys.exit(0 if rel <= tol else 1)
""" % (load, report)


class LocalQuantd:
    def __init__(self, bindir, tmp=None, input_root=None, workers=1, prefix="quantd-"):
        """Without `tmp`, a fresh temporary directory (`prefix`...) that close() removes; without
        `input_root`, the daemon reads job inputs only under tmp."""
        self.owns_tmp = tmp is None
        self.tmp = tempfile.mkdtemp(prefix=prefix) if tmp is None else tmp
        self.bindir, self.workers = bindir, workers
        self.input_root = input_root if input_root is not None else self.tmp
        self.daemon, self.addr = None, None

    def start(self):
        """Starts the daemon; True when it listens (self.addr set), False when it did not start."""
        port_file = os.path.join(self.tmp, "port")
        self.daemon = subprocess.Popen(
            [os.path.join(self.bindir, "quantd"), "--listen=127.0.0.1:0", "--metrics_listen=",
             f"--data_dir={self.tmp}/var", f"--port_file={port_file}",
             f"--local_workers={self.workers}", f"--input_root={self.input_root}"],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.tmp, "quantd.log"), "w"))
        for _ in range(300):
            if os.path.exists(port_file) or self.daemon.poll() is not None:
                break
            time.sleep(0.1)
        if not os.path.exists(port_file):
            return False
        self.addr = "127.0.0.1:" + open(port_file).read().strip()
        return True

    def stop(self):
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()

    def close(self):
        """stop(), and removes tmp when this object made it."""
        self.stop()
        if self.owns_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        if not self.start():
            path = os.path.join(self.tmp, "quantd.log")
            tail = open(path).read()[-4000:] if os.path.exists(path) else ""
            self.close()
            raise RuntimeError("quantd did not start; its log ends:\n" + tail)
        return self

    def quantctl(self, *args):
        return subprocess.run([os.path.join(self.bindir, "quantctl"), "--addr", self.addr, *args],
                              capture_output=True, text=True)

    def run(self, *args, expect=0):
        """quantctl ARGS, which must exit with `expect` (else RuntimeError with its output)."""
        r = self.quantctl(*args)
        if r.returncode != expect:
            raise RuntimeError(f"quantctl {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    def fetch_refused(self, name, out, fmt, why):
        """`quantctl fetch NAME -o OUT --format FMT` must exit 1 with FAILED_PRECONDITION and
        `why` in its message; logs the refusal and returns whether it was refused so."""
        r = self.run("fetch", name, "-o", out, "--format", fmt, expect=1)
        ok = "FAILED_PRECONDITION" in r.stderr and why in r.stderr
        log(f"refusal {name} -> {fmt}: {'ok' if ok else 'FAIL'}: {r.stderr.strip()}")
        return ok

    def submit_stories260k(self, examples, name, method, *flags, calib_seqs=16):
        """Submits EXAMPLES/stories260K with `method` and `flags`, calibrated on the first
        `calib_seqs` sequences of the bundled TinyStories tokens, and waits for it."""
        return self.run("submit", os.path.join(examples, "stories260K"), "--calib",
                        os.path.join(examples, "tinystories/calib_stories_0_499.u16"), "--method",
                        method, "--name", name, "--max-calib-seqs", str(calib_seqs), *flags, "--wait")

    def __exit__(self, *exc):
        self.close()
        return False
