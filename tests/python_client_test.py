#!/usr/bin/env python3
"""End-to-end test of the Python client (client/python/quantd_client.py) against a real quantd
with 2 local workers: submit the stories260K job, watch it, fetch the artifact (sha256 checked
against the manifest, resume from a partial download, a corrupt partial file is DATA_LOSS), and
an invalid request is INVALID_ARGUMENT, inputs outside --input_root (a file, a symlink pointing
out) are PERMISSION_DENIED. A second quantd with bearer tokens and TLS: the client with the token
and the CA runs a job; no token, a wrong token, no TLS and a world-readable token file are refused
with the reason; a read-only token cannot submit and a tenant token cannot reach other models,
each denial naming the scope or tenant in the library's exception and the CLI's output.

The outer run (stdlib only) prepares a venv under $QUANTD_BINARY_DIR/python-client-venv with
client/python/requirements.txt (kept across runs, reinstalled when the requirements change) and
generates the stubs into $QUANTD_BINARY_DIR/python-client-stubs, then re-runs this file inside
the venv. Exit 77 (CTest SKIP_RETURN_CODE) when PyPI cannot be reached or venv is unavailable.
"""

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

SOURCE_DIR = os.path.abspath(os.environ.get("QUANTD_SOURCE_DIR",
                                            os.path.join(os.path.dirname(__file__), "..")))
BINARY_DIR = os.path.abspath(os.environ.get("QUANTD_BINARY_DIR", os.path.join(SOURCE_DIR, "build")))
CLIENT_DIR = os.path.join(SOURCE_DIR, "client", "python")
REQUIREMENTS = os.path.join(CLIENT_DIR, "requirements.txt")
VENV = os.path.join(BINARY_DIR, "python-client-venv")
STUBS = os.path.join(BINARY_DIR, "python-client-stubs")
SKIP = 77

MODEL = os.path.join(SOURCE_DIR, "examples", "stories260K")
CALIB = os.path.join(SOURCE_DIR, "examples", "tinystories", "calib_stories_0_499.u16")
EVAL = os.path.join(SOURCE_DIR, "examples", "tinystories", "eval_stories_500_999.u16")


# -- outer: venv + stubs -----------------------------------------------------------------------

def pypi_reachable():
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    try:
        urllib.request.urlopen(index + "/grpcio/", timeout=15).read(1)
        return True, index
    except Exception as e:  # noqa: BLE001 (any failure means: no index)
        return False, "%s: %s" % (index, e)


def prepare_venv():
    """Returns the venv's python, or exits SKIP/1 with a message."""
    py = os.path.join(VENV, "bin", "python")
    with open(REQUIREMENTS, "rb") as f:
        stamp_want = hashlib.sha256(f.read() + sys.version.encode()).hexdigest()
    stamp = os.path.join(VENV, ".quantd-requirements.sha256")
    if os.path.exists(py) and os.path.exists(stamp) and read(stamp) == stamp_want:
        return py
    ok, where = pypi_reachable()
    if not ok:
        print("SKIP: cannot reach the package index (%s); the Python client test needs pip "
              "install of %s" % (where, REQUIREMENTS))
        sys.exit(SKIP)
    shutil.rmtree(VENV, ignore_errors=True)
    r = subprocess.run([sys.executable, "-m", "venv", VENV], capture_output=True, text=True)
    if r.returncode != 0:
        print("SKIP: %s -m venv failed (install python3-venv): %s" % (sys.executable, r.stderr))
        sys.exit(SKIP)
    r = subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                        REQUIREMENTS], capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        print("FAIL: pip install -r %s failed although %s is reachable:\n%s%s" % (
            REQUIREMENTS, where, r.stdout, r.stderr))
        sys.exit(1)
    with open(stamp, "w") as f:
        f.write(stamp_want)
    return py


def outer():
    t0 = time.monotonic()
    py = prepare_venv()
    shutil.rmtree(STUBS, ignore_errors=True)
    subprocess.run([py, os.path.join(CLIENT_DIR, "quantd_client.py"), "gen-stubs", STUBS],
                   check=True, env=dict(os.environ, QUANTD_STUBS_DIR=STUBS))
    print("venv and stubs ready in %.1f s" % (time.monotonic() - t0), flush=True)
    env = dict(os.environ, QUANTD_STUBS_DIR=STUBS, QUANTD_SOURCE_DIR=SOURCE_DIR,
               QUANTD_BINARY_DIR=BINARY_DIR, PYTHONPATH=CLIENT_DIR)
    return subprocess.run([py, os.path.abspath(__file__), "--inner"], env=env).returncode


# -- inner: the test proper (runs in the venv) -------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def sha256_file(path):
    return hashlib.sha256(read(path, "rb")).hexdigest()


def start_quantd(cls, workers, flags=()):
    """Starts quantd for a test class (cls.tmp, cls.proc, cls.log, cls.addr); job inputs are
    confined to the source tree and cls.inputs (--input_root)."""
    cls.tmp = tempfile.mkdtemp(prefix="quantd_pyclient_")
    cls.inputs = os.path.join(cls.tmp, "inputs")
    os.makedirs(cls.inputs)
    port_file = os.path.join(cls.tmp, "port")
    cls.log = open(os.path.join(cls.tmp, "quantd.log"), "w")
    cls.proc = subprocess.Popen(
        [os.path.join(BINARY_DIR, "quantd"), "--listen=127.0.0.1:0",
         "--metrics_listen=127.0.0.1:%d" % free_port(),
         "--data_dir=" + os.path.join(cls.tmp, "data"), "--port_file=" + port_file,
         "--worker_binary=" + os.path.join(BINARY_DIR, "quantd-worker"),
         "--local_workers=%d" % workers, "--input_root=" + SOURCE_DIR,
         "--input_root=" + cls.inputs] + list(flags),
        stdout=cls.log, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(300):
        if os.path.exists(port_file) and read(port_file).strip():
            break
        if cls.proc.poll() is not None:
            raise RuntimeError("quantd exited: " + read(os.path.join(cls.tmp, "quantd.log")))
        time.sleep(0.05)
    cls.addr = "127.0.0.1:" + read(port_file).strip()


def stop_quantd(cls):
    cls.proc.send_signal(signal.SIGTERM)
    try:
        cls.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(cls.proc.pid, signal.SIGKILL)
        cls.proc.wait()
    cls.log.close()
    shutil.rmtree(cls.tmp, ignore_errors=True)


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        start_quantd(cls, 2)
        import quantd_client
        cls.qc = quantd_client
        cls.client = quantd_client.Client(cls.addr)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        stop_quantd(cls)

    @classmethod
    def quantd_log(cls):
        return read(os.path.join(cls.tmp, "quantd.log"))

    def cli(self, *args):
        return subprocess.run([sys.executable, os.path.join(CLIENT_DIR, "quantd_client.py"),
                               "--addr", self.addr] + list(args), capture_output=True, text=True,
                              timeout=300)

    def test_submit_watch_fetch(self):
        qc, c = self.qc, self.client
        # 8 calibration sequences keep the Hessian phase short (rtn does not use the Hessians);
        # the two perplexity evaluations over the eval file are most of the ~70 s.
        job = c.submit(MODEL, calib=CALIB, eval_path=EVAL, method="rtn", bits=4,
                       name="py-rtn4", request_id="py-client-test-1", max_calib_seqs=8)
        self.assertTrue(job.id)
        # The same request id returns the same job.
        self.assertEqual(c.submit(MODEL, calib=CALIB, eval_path=EVAL, method="rtn", bits=4,
                                  name="py-rtn4", request_id="py-client-test-1",
                                  max_calib_seqs=8).id, job.id)
        events = []
        final = c.watch(job.id, on_event=events.append)
        self.assertEqual(final.state, qc.pb.JOB_STATE_SUCCEEDED, final.error + self.quantd_log())
        self.assertGreater(len(events), 1)
        self.assertEqual(final.version, 1)
        self.assertEqual(final.tasks_done, final.tasks_total)
        self.assertAlmostEqual(final.fp_ppl, 5.4540, delta=5e-3)
        self.assertGreater(final.quant_ppl, final.fp_ppl)

        # Library fetch: every file's sha256 equals the manifest's.
        out = os.path.join(self.tmp, "fetched")
        mv = c.fetch("py-rtn4", out)
        manifest = json.loads(read(os.path.join(out, "manifest.json")))
        self.assertEqual(manifest, json.loads(mv.manifest_json))
        listed = {f["path"]: f for f in manifest["files"]}
        self.assertIn("model.safetensors", listed)
        self.assertEqual(set(listed), {f.path for f in mv.files})
        for path, f in listed.items():
            self.assertEqual(sha256_file(os.path.join(out, path)), f["sha256"], path)
            self.assertEqual(os.path.getsize(os.path.join(out, path)), f["size"], path)
        self.assertEqual(len(manifest["tensors"]), 35)

        # CLI fetch resumes a partial download from its size.
        model_bytes = read(os.path.join(out, "model.safetensors"), "rb")
        half = len(model_bytes) // 2
        resume = os.path.join(self.tmp, "resume")
        os.makedirs(resume)
        with open(os.path.join(resume, "model.safetensors.part"), "wb") as f:
            f.write(model_bytes[:half])
        r = self.cli("fetch", "py-rtn4@1", "-o", resume)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("model.safetensors %d bytes resumed at %d" % (len(model_bytes), half),
                      r.stdout)
        self.assertEqual(sha256_file(os.path.join(resume, "model.safetensors")),
                         listed["model.safetensors"]["sha256"])
        self.assertFalse(os.path.exists(os.path.join(resume, "model.safetensors.part")))

        # A partial file with wrong bytes fails the sha256 check (DATA_LOSS) and is deleted.
        bad = os.path.join(self.tmp, "bad")
        os.makedirs(bad)
        with open(os.path.join(bad, "model.safetensors.part"), "wb") as f:
            f.write(b"\0" * half)
        with self.assertRaises(qc.FetchError) as e:
            c.fetch("py-rtn4", bad)
        self.assertEqual(e.exception.code, "DATA_LOSS")
        self.assertIn("model.safetensors", str(e.exception))
        self.assertFalse(os.path.exists(os.path.join(bad, "model.safetensors.part")))
        self.assertFalse(os.path.exists(os.path.join(bad, "manifest.json")))
        c.fetch("py-rtn4", bad)  # a clean retry succeeds
        self.assertEqual(sha256_file(os.path.join(bad, "model.safetensors")),
                         listed["model.safetensors"]["sha256"])

        # Deleting the version: it is gone from the registry, a second delete is NOT_FOUND.
        import grpc
        self.assertEqual(c.delete_model("py-rtn4", 1).version, 1)
        self.assertEqual(c.models("py-rtn4"), [])
        with self.assertRaises(grpc.RpcError) as e:
            c.delete_model("py-rtn4", 1)
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)

    def test_finetune_keywords(self):
        # finetune=True and the ft_* keywords reach the spec (defaults filled by the server); the
        # job has one fine-tuning task per block of stories260K and reports their held-out
        # losses. An ft_* option without finetune=True is refused before any call.
        qc, c = self.qc, self.client
        with self.assertRaises(ValueError):
            c.submit(MODEL, calib=CALIB, method="rtn", bits=4, name="py-ft-bad", ft_epochs=2)
        with self.assertRaises(ValueError):
            c.submit(MODEL, calib=CALIB, method="rtn", bits=4, name="py-ft-bad", finetune=True,
                     ft_e2e="maybe")
        with self.assertRaises(ValueError):
            c.submit(MODEL, calib=CALIB, method="rtn", bits=4, name="py-ft-bad", finetune=True,
                     ft_e2e="off", ft_e2e_epochs=3)
        # The server names a bad value too (here one the client does not check).
        import grpc
        with self.assertRaises(grpc.RpcError) as e:
            c.submit(MODEL, calib=CALIB, method="rtn", bits=4, name="py-ft-bad", finetune=True,
                     ft_e2e_epochs=5000)
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("e2e_epochs 5000", e.exception.details())
        job = c.submit(MODEL, calib=CALIB, method="rtn", bits=3, name="py-ft", max_calib_seqs=6,
                       calib_seq_len=64, finetune=True, ft_epochs=1, ft_lr=2e-3,
                       ft_e2e_epochs=1, ft_e2e_lr=2e-3)
        self.assertTrue(job.spec.finetune.enabled)
        self.assertEqual((job.spec.finetune.epochs, job.spec.finetune.holdout_sequences), (1, 2))
        self.assertAlmostEqual(job.spec.finetune.learning_rate, 2e-3)
        self.assertEqual((job.spec.finetune.e2e, job.spec.finetune.e2e_epochs), ("on", 1))
        self.assertAlmostEqual(job.spec.finetune.e2e_learning_rate, 2e-3)
        final = c.watch(job.id)
        self.assertEqual(final.state, qc.pb.JOB_STATE_SUCCEEDED, final.error + self.quantd_log())
        self.assertEqual((final.finetune_blocks, final.finetune_blocks_done), (5, 5))
        self.assertEqual([b.layer for b in final.finetune_losses], [0, 1, 2, 3, 4])
        for b in final.finetune_losses:
            self.assertLessEqual(b.heldout_best, b.heldout_before)
        # The KL stage ran after the blocks (on by default) and kept a held-out KL no worse.
        self.assertTrue(final.finetune_e2e.done)
        self.assertEqual(final.finetune_e2e.epochs_run, 1)
        self.assertLessEqual(final.finetune_e2e.heldout_best, final.finetune_e2e.heldout_before)

    def test_gguf_export(self):
        # --grid q4_0 without bits (the grid's own), then a GGUF through `quantctl export`; a
        # per-channel version is refused from its manifest before anything is downloaded.
        qc, c = self.qc, self.client
        quantctl = os.path.join(BINARY_DIR, "quantctl")
        job = c.submit(MODEL, calib=CALIB, method="gptq", bits=0, grid="q4_0", name="py-q40",
                       max_calib_seqs=8)
        final = c.watch(job.id)
        self.assertEqual(final.state, qc.pb.JOB_STATE_SUCCEEDED, final.error + self.quantd_log())
        self.assertEqual((final.spec.bits, final.spec.group_size, final.spec.grid), (4, 32, "q4_0"))
        out = os.path.join(self.tmp, "gguf")
        c.fetch_export("py-q40", out, "gguf", quantctl=quantctl)
        self.assertEqual(read(os.path.join(out, "model.gguf"), "rb")[:4], b"GGUF")
        self.assertFalse(os.path.exists(os.path.join(out, ".quantd-native")))
        self.assertIn("gguf-q4_0", json.loads(read(os.path.join(out, "quantd_manifest.json")))[
            "export_formats"])
        # The same version as a GPTQ checkpoint (a q4_0 grid is symmetric: GPTQ v1, sym).
        gq = os.path.join(self.tmp, "gptq")
        c.fetch_export("py-q40", gq, "gptq", quantctl=quantctl)
        q = json.loads(read(os.path.join(gq, "config.json")))["quantization_config"]
        self.assertEqual((q["quant_method"], q["bits"], q["group_size"], q["sym"],
                          q["checkpoint_format"]), ("gptq", 4, 32, True, "gptq"))
        self.assertTrue(os.path.exists(os.path.join(gq, "model.safetensors")))
        self.assertFalse(os.path.exists(os.path.join(gq, ".quantd-native")))
        job = c.submit(MODEL, calib=CALIB, method="rtn", bits=4, name="py-rtn-pc", max_calib_seqs=8)
        self.assertEqual(c.watch(job.id).state, qc.pb.JOB_STATE_SUCCEEDED)
        env = dict(os.environ, QUANTCTL=quantctl)
        r = subprocess.run([sys.executable, os.path.join(CLIENT_DIR, "quantd_client.py"), "--addr",
                            self.addr, "fetch", "py-rtn-pc", "-o", os.path.join(self.tmp, "pc"),
                            "--format", "gguf"], capture_output=True, text=True, timeout=300,
                           env=env)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("FAILED_PRECONDITION", r.stderr)
        self.assertIn("can be fetched as: native, hf", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "pc", ".quantd-native")))

    def test_invalid_requests(self):
        import grpc
        c = self.client
        with self.assertRaises(grpc.RpcError) as e:
            c.submit(MODEL, calib=CALIB, method="rtn", bits=7, name="py-bad")
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("7", e.exception.details())
        with self.assertRaises(grpc.RpcError) as e:
            c.get_job("no-such-job")
        self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
        r = self.cli("submit", MODEL, "--calib", CALIB, "--method", "magic", "--bits", "4",
                     "--name", "py-bad")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("INVALID_ARGUMENT", r.stderr)
        r = self.cli("fetch", "no-such-model", "-o", os.path.join(self.tmp, "none"))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("NOT_FOUND", r.stderr)

    def test_inputs_outside_the_input_root_are_refused(self):
        import grpc
        c = self.client
        # A file outside --input_root, and a symlink inside the root that points outside it.
        secret = os.path.join(self.tmp, "secret.txt")
        with open(secret, "w") as f:
            f.write("not for quantd\n")
        with self.assertRaises(grpc.RpcError) as e:
            c.submit(MODEL, calib=secret, method="rtn", bits=4, name="py-leak")
        self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        self.assertIn("outside every --input_root", e.exception.details())
        link = os.path.join(self.inputs, "calib.txt")
        os.symlink(secret, link)
        r = self.cli("submit", MODEL, "--calib", link, "--method", "rtn", "--bits", "4",
                     "--name", "py-leak")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("PERMISSION_DENIED: calibration file %s resolves to %s" % (
            link, os.path.realpath(secret)), r.stderr)


TOKEN = "py-client-token-0123456789"
READER = "py-reader-token-0123456789"   # scopes=read
TEAM_A = "py-team-a-token-0123456789"   # scopes=submit,read tenant=py-team-a.


class SecuredPythonClientTest(unittest.TestCase):
    """quantd with --auth_token_file and TLS (a test CA and a server certificate for
    127.0.0.1, made with openssl)."""

    @classmethod
    def setUpClass(cls):
        cls.certs = tempfile.mkdtemp(prefix="quantd_pyclient_certs_")
        script = """set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj "/CN=quantd pyclient test ca"
key server.key
openssl req -new -key server.key -out server.csr -subj "/CN=quantd pyclient test server"
printf 'subjectAltName=IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n' > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \\
  -days 2 -extfile server.ext 2>/dev/null
"""
        subprocess.run(["/bin/sh", "-c", script], cwd=cls.certs, check=True,
                       capture_output=True)
        cls.token_file = os.path.join(cls.certs, "tokens")
        with open(cls.token_file, "w") as f:
            f.write("# test\n%s  py-tester\n%s py-reader scopes=read\n%s py-team-a "
                    "scopes=submit,read tenant=py-team-a.\n" % (TOKEN, READER, TEAM_A))
        os.chmod(cls.token_file, 0o600)
        start_quantd(cls, 1, ["--auth_token_file=" + cls.token_file,
                              "--tls_cert=" + os.path.join(cls.certs, "server.pem"),
                              "--tls_key=" + os.path.join(cls.certs, "server.key")])
        import quantd_client
        cls.qc = quantd_client
        cls.ca = os.path.join(cls.certs, "ca.pem")

    @classmethod
    def tearDownClass(cls):
        stop_quantd(cls)
        shutil.rmtree(cls.certs, ignore_errors=True)

    def cli(self, *args, env=None):
        return subprocess.run([sys.executable, os.path.join(CLIENT_DIR, "quantd_client.py"),
                               "--addr", self.addr] + list(args), capture_output=True, text=True,
                              timeout=300, env=dict(os.environ, **(env or {})))

    def test_token_and_tls(self):
        import grpc
        qc = self.qc
        self.assertEqual(qc.read_token_file(self.token_file), TOKEN)
        with qc.Client(self.addr, token=TOKEN, tls_ca=self.ca) as c:
            job = c.submit(MODEL, calib=CALIB, method="rtn", bits=4, name="py-secure",
                           max_calib_seqs=1)
            final = c.watch(job.id)
            self.assertEqual(final.state, qc.pb.JOB_STATE_SUCCEEDED,
                             final.error + read(os.path.join(self.tmp, "quantd.log")))
        # TLS without a token: the server's UNAUTHENTICATED; a wrong token: PERMISSION_DENIED.
        with qc.Client(self.addr, tls_ca=self.ca) as c:
            with self.assertRaises(grpc.RpcError) as e:
                c.get_job(job.id)
            self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            self.assertIn("no token sent", e.exception.details())
        with qc.Client(self.addr, token="wrong-token-0123456789", tls_ca=self.ca) as c:
            with self.assertRaises(grpc.RpcError) as e:
                c.models()
            self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        # Scopes: a read-only token reads but cannot submit, and the denial names the scope.
        with qc.Client(self.addr, token=READER, tls_ca=self.ca) as c:
            self.assertEqual(c.get_job(job.id).id, job.id)
            with self.assertRaises(grpc.RpcError) as e:
                c.submit(MODEL, calib=CALIB, method="rtn", bits=4, name="py-reader-job")
            self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn('token "py-reader" lacks scope "submit"', e.exception.details())
        r = self.cli("submit", MODEL, "--calib", CALIB, "--method", "rtn", "--bits", "4",
                     "--name", "py-reader-job", env={"QUANTD_TOKEN": READER, "QUANTD_TLS_CA": self.ca})
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn('PERMISSION_DENIED: token "py-reader" lacks scope "submit"', r.stderr)
        # Tenants: team A's token sees its models only, and cannot submit outside its prefix.
        with qc.Client(self.addr, token=TEAM_A, tls_ca=self.ca) as c:
            self.assertEqual(c.models(), [])  # py-secure is not under py-team-a.
            with self.assertRaises(grpc.RpcError) as e:
                c.submit(MODEL, calib=CALIB, method="rtn", bits=4, name="py-secure")
            self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn('"py-team-a" is limited to models whose names start with "py-team-a."',
                          e.exception.details())
            with self.assertRaises(grpc.RpcError) as e:
                c.get_job(job.id)
            self.assertEqual(e.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
        # Plaintext against the TLS port never becomes ready.
        with self.assertRaises(grpc.FutureTimeoutError):
            qc.Client(self.addr, token=TOKEN, connect_timeout_s=1.0)
        with self.assertRaises(ValueError):
            qc.Client(self.addr, tls_cert=self.ca)

        # The CLI: --token-file and --tls-ca, or the environment.
        r = self.cli("--token-file", self.token_file, "--tls-ca", self.ca, "status", job.id)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("SUCCEEDED", r.stdout)
        r = self.cli("status", job.id, env={"QUANTD_TOKEN": TOKEN, "QUANTD_TLS_CA": self.ca})
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = self.cli("--tls-ca", self.ca, "status", job.id, env={"QUANTD_TOKEN": ""})
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("UNAUTHENTICATED", r.stderr)
        # A token file other users can read is refused before anything is sent.
        open_file = os.path.join(self.certs, "open-token")
        with open(open_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(open_file, 0o644)
        r = self.cli("--token-file", open_file, "--tls-ca", self.ca, "status", job.id)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)
        self.assertIn("chmod 600", r.stderr)


if __name__ == "__main__":
    if "--inner" in sys.argv:
        sys.argv.remove("--inner")
        unittest.main(verbosity=2)
    sys.exit(outer())
