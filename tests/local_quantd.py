"""A throw-away quantd with local workers for the Python end-to-end tests (stdlib only).

    with LocalQuantd(bindir, tmp, input_root=examples_dir, workers=1) as q:
        q.quantctl("models")          # CompletedProcess; q.addr is "127.0.0.1:PORT"

The daemon listens on a free port (written to TMP/port), keeps its data in TMP/var, reads job
inputs only under `input_root` (quantd --input_root) and logs to TMP/quantd.log; it is stopped with SIGTERM (SIGKILL after 20 s) on exit.
"""
import os
import signal
import subprocess
import time


class LocalQuantd:
    def __init__(self, bindir, tmp, input_root, workers=1):
        self.bindir, self.tmp, self.workers = bindir, tmp, workers
        self.input_root = input_root
        self.daemon, self.addr = None, None

    def __enter__(self):
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
            self.__exit__(None, None, None)
            raise RuntimeError("quantd did not start; see " + os.path.join(self.tmp, "quantd.log"))
        self.addr = "127.0.0.1:" + open(port_file).read().strip()
        return self

    def quantctl(self, *args):
        return subprocess.run([os.path.join(self.bindir, "quantctl"), "--addr", self.addr, *args],
                              capture_output=True, text=True)

    def __exit__(self, *exc):
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        return False
