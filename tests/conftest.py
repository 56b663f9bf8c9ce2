import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from wsmonitor.testing import MetricsSnapshot

ROOT = Path(__file__).resolve().parent.parent
IN_CI = bool(os.environ.get("CI"))


def need(condition, reason):
    """Skip on a developer's machine without a real part; fail in CI, where it must be present."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (required when CI is set)")
    pytest.skip(reason)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Poll ``predicate`` until it returns a truthy value, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class Daphne:
    """A real daphne process serving the demo project on a loopback port."""

    def __init__(self, tmp_path, env=None, args=(), name="live",
                 app="demo_project.asgi:application", port=None):
        self.port = port or free_port()  # a port: restart a server where clients expect it
        self.log_path = tmp_path / f"daphne-{name}-{self.port}.log"
        full_env = {**os.environ, "DEMO_DB": str(tmp_path / "demo.sqlite3"),
                    "WSMONITOR_NODE": name, "PYTHONUNBUFFERED": "1",
                    "DJANGO_SETTINGS_MODULE": "demo_project.settings"}
        full_env.pop("REDIS_URL", None)
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), *args,
             app],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ready, timeout=30, message=f"daphne on port {self.port}")
        except BaseException:
            self.stop()
            raise

    def _ready(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"daphne exited with {self.process.returncode}:\n{self.log()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def http_url(self, path="/"):
        return f"http://127.0.0.1:{self.port}{path}"

    def ws_url(self, path):
        return f"ws://127.0.0.1:{self.port}{path}"

    def scrape(self):
        with urllib.request.urlopen(self.http_url("/metrics"), timeout=5) as response:
            return MetricsSnapshot.parse(response.read().decode())

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def start_daphne(tmp_path):
    """Factory: start_daphne(env=..., args=..., name=...) -> Daphne; all stopped at teardown."""
    started = []

    def start(**kwargs):
        server = Daphne(tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def live_daphne(start_daphne):
    return start_daphne()


def redis_available(host="127.0.0.1", port=6379):
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_url():
    need(redis_available(), "Redis is not answering on 127.0.0.1:6379")
    return "redis://127.0.0.1:6379/0"


async def eventually(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Async twin of :func:`wait_until` for tests that keep sockets open on the loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def established(port):
    """Server-side ESTABLISHED TCP connections on ``port``, counted by the kernel (ss)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())
