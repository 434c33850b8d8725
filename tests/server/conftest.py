"""Starts `pie serve` (the embedded default model, CPU) on a loopback port for the suite.

PIE_BIN names the built `pie` program (CTest passes it). Every wait here is bounded."""
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request

import pytest

API_KEY = "test-key-123"
MODEL = "pie-test"
ALIAS = "pie-test-alias"
MAX_MODEL_LEN = 256
MAX_BODY = 65536


def pie_bin():
    path = os.environ.get("PIE_BIN")
    if not path or not os.path.exists(path):
        pytest.fail("PIE_BIN must name the built pie program", pytrace=False)
    return path


class Server:
    """A running `pie serve`; stdout is collected by a reader thread."""

    def __init__(self, args, env=None, wait_ready=True):
        self.lines = []
        self.port = None
        self._have_port = threading.Event()
        full_env = dict(os.environ)
        full_env.pop("PIE_API_KEY", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [pie_bin(), "serve", "--host", "127.0.0.1", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._have_port.wait(60):
            self.kill()
            raise RuntimeError("pie serve printed no port:\n" + "\n".join(self.lines))
        self.base = f"http://127.0.0.1:{self.port}"
        if wait_ready:
            self.wait_ready()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m and self.port is None:
                self.port = int(m.group(1))
                self._have_port.set()
        self._have_port.set()

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("pie serve exited:\n" + "\n".join(self.lines))
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception:
                pass
            time.sleep(0.05)
        raise RuntimeError("pie serve not ready in time:\n" + "\n".join(self.lines))

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Sends `sig` and returns the exit code (killing it if it does not exit in time)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def server():
    s = Server(["--api-key", API_KEY, "--served-model-name", MODEL, ALIAS,
                "--max-model-len", str(MAX_MODEL_LEN), "--max-request-body-bytes", str(MAX_BODY),
                "--max_num_seqs", "128", "--seed", "0", "--reasoning-parser", "qwen3"])
    yield s
    rc = s.stop()
    assert rc == 0, "pie serve did not exit 0 on SIGTERM:\n" + "\n".join(s.lines)


@pytest.fixture(scope="session")
def client(server):
    import openai
    return openai.OpenAI(base_url=server.base + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
