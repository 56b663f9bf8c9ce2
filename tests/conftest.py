import asyncio
import contextlib
import importlib.util
import json
import os
import re
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
    # Separate databases let several checkouts run their suites side by side.
    return f"redis://127.0.0.1:6379/{os.environ.get('WSM_TEST_REDIS_DB', '0')}"


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


def established(port, state="established"):
    """Server-side TCP connections on ``port`` in ``state``, counted by the kernel (ss)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", state, f"( sport = :{port} )"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def rss_kb(pid):
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


# --- Servers: daphne, uvicorn, gunicorn with uvicorn workers ------------------------------



class Server:
    """A real ASGI server process serving ``app`` on a loopback port.

    Subclasses give the command line; all share ``.port``, ``.ws_url()``, ``.http_url()``,
    ``.scrape()``, ``.log()`` and ``.stop()``. ``keepalive=(interval, timeout)`` sets the
    server's own WebSocket ping interval and timeout, in seconds.
    """

    kind = "server"
    #: Modules that must be importable for this server to run.
    modules = ()

    def __init__(self, tmp_path, env=None, args=(), name="live",
                 app="demo_project.asgi:application", port=None, keepalive=None):
        need(self.installed(), f"{self.kind} is not installed ({', '.join(self.modules)})")
        self.port = port or free_port()
        self.tmp_path = tmp_path
        self.log_path = tmp_path / f"{self.kind}-{name}-{self.port}.log"
        full_env = {**os.environ, "DEMO_DB": str(tmp_path / "demo.sqlite3"),
                    "WSMONITOR_NODE": name, "PYTHONUNBUFFERED": "1",
                    "DJANGO_SETTINGS_MODULE": "demo_project.settings"}
        full_env.pop("REDIS_URL", None)
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        full_env.update(self.environment(keepalive))
        full_env.update(env or {})
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", *self.command(app, keepalive), *args],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ready, timeout=30, message=f"{self.kind} on port {self.port}")
        except BaseException:
            self.stop()
            raise

    @classmethod
    def installed(cls):
        return all(importlib.util.find_spec(module) for module in cls.modules)

    def command(self, app, keepalive):
        """``python -m`` arguments (without the extra ``args``)."""
        raise NotImplementedError

    def environment(self, keepalive):
        return {}

    def _ready(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.kind} exited with {self.process.returncode}:\n{self.log()}")
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

    def events(self, name):
        """The JSON log events called ``name`` (wsmonitor's structlog lines)."""
        found = []
        for line in self.log().splitlines():
            if line.startswith("{") and f'"event": "{name}"' in line:
                found.append(json.loads(line))
        return found

    def workers(self):
        """Process IDs serving connections: the process itself unless it forks workers."""
        return {self.process.pid}

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # Its workers first, while they are still its children, then the process.
                for pid in self.workers() - {self.process.pid}:
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


class DaphneServer(Server):
    """daphne serving the demo (or ``app``) on a loopback port."""

    kind = "daphne"
    modules = ("daphne",)

    def command(self, app, keepalive):
        ping = ()
        if keepalive:
            ping = ("--ping-interval", str(keepalive[0]), "--ping-timeout", str(keepalive[1]))
        return ["daphne", "-b", "127.0.0.1", "-p", str(self.port), *ping, app]


Daphne = DaphneServer  # the name most tests use


#: uvicorn's implementations, named explicitly (what uvicorn[standard]'s "auto" picks today).
UVICORN_CONFIG = {"loop": "uvloop", "http": "httptools", "ws": "websockets-sansio",
                  "lifespan": "off"}


class Uvicorn(Server):
    """``python -m uvicorn``, one process, the websockets (sans-I/O) implementation."""

    kind = "uvicorn"
    modules = ("uvicorn", "uvloop", "httptools", "websockets")

    def command(self, app, keepalive):
        ping = ()
        if keepalive:
            ping = ("--ws-ping-interval", str(keepalive[0]),
                    "--ws-ping-timeout", str(keepalive[1]))
        options = [f"--{key}={value}" for key, value in UVICORN_CONFIG.items()]
        return ["uvicorn", app, "--host", "127.0.0.1", "--port", str(self.port), *options, *ping]


class GunicornUvicorn(Server):
    """gunicorn with 2 uvicorn workers (``tests.uvicorn_worker``) in multiprocess mode."""

    kind = "gunicorn"
    modules = ("gunicorn", "uvicorn", "uvloop", "httptools", "websockets")
    count = 2

    def environment(self, keepalive):
        self.metrics_dir = self.tmp_path / f"prometheus-{self.port}"
        self.metrics_dir.mkdir()
        config = dict(UVICORN_CONFIG)
        if keepalive:
            config.update(ws_ping_interval=keepalive[0], ws_ping_timeout=keepalive[1])
        return {"PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
                "TESTS_UVICORN_CONFIG": json.dumps(config)}

    def command(self, app, keepalive):
        return ["gunicorn", "-k", "tests.uvicorn_worker.Worker", "-w", str(self.count),
                "-b", f"127.0.0.1:{self.port}", "--graceful-timeout", "5", app]

    def _ready(self):
        # The master listens before the workers run: ready once every worker has started.
        if not super()._ready():
            return False
        try:
            return len(self.live_pids()) == self.count
        except OSError:
            return False

    def live_pids(self):
        """Worker pids with a live-gauge file, as one worker's scrape reports them."""
        return {int(pid) for pid in self.scrape().label_values("ws_process_open_fds", "pid")}

    def workers(self):
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as children:
                return {int(pid) for pid in children.read().split()}
        except OSError:
            return set()


SERVERS = {"daphne": DaphneServer, "uvicorn": Uvicorn, "gunicorn": GunicornUvicorn}


@pytest.fixture
def start_server(tmp_path):
    """Factory: start_server("daphne" | "uvicorn" | "gunicorn", **kwargs); stopped at teardown."""
    started = []

    def start(kind, **kwargs):
        server = SERVERS[kind](tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def established_by_pid(port):
    """Server-side ESTABLISHED connections on ``port`` per owning process (ss -p)."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout
    counts = {}
    for line in out.splitlines():
        for pid in set(re.findall(r"pid=(\d+)", line)):
            counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


# --- Markers: which tests need a real server, Redis or a browser --------------------------
#
# Tests are marked from what they use, so a new test is classified without anyone
# remembering to: the fixtures it requests (directly or through other fixtures), and the
# names and string constants in its body and in the module-level helpers it calls.
# `pytest -m "not server and not redis and not browser"` is the fast suite the version
# matrix runs (scripts/matrix.sh).

import inspect  # noqa: E402
import types  # noqa: E402

_MARKS = {
    "server": {
        "fixtures": {"start_daphne", "live_daphne", "start_server"},
        "names": {"Daphne", "DaphneServer", "Uvicorn", "GunicornUvicorn", "SERVERS", "Popen"},
        "strings": {"promtool", "prometheus", "nginx", "daphne", "bench"},
    },
    "redis": {"fixtures": {"redis_url"}, "names": {"redis_available"}, "strings": set()},
    "browser": {
        "fixtures": {"browser", "page"},
        "names": {"sync_playwright", "async_playwright"},
        "strings": {"chromium", "playwright"},
    },
}


def _code_words(function, module, seen):
    """Global names and string constants used by ``function`` and by the module's own
    functions it calls (transitively)."""
    words = set()
    code = getattr(function, "__code__", None)
    stack = [code] if code is not None else []
    while stack:
        current = stack.pop()
        words.update(current.co_names)
        for const in current.co_consts:
            if isinstance(const, types.CodeType):
                stack.append(const)
            elif isinstance(const, str) and len(const) < 40:
                words.update(const.replace("/", " ").replace(".", " ").split())
    for name in list(words):
        target = getattr(module, name, None)
        if (inspect.isfunction(target) and target.__module__ == module.__name__
                and target not in seen):
            seen.add(target)
            words |= _code_words(target, module, seen)
    return words


def pytest_collection_modifyitems(config, items):
    for item in items:
        function = getattr(item, "function", None)
        module = getattr(item, "module", None)
        if function is None or module is None:
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        words = _code_words(inspect.unwrap(function), module, {function})
        info = getattr(item, "_fixtureinfo", None)
        for definitions in (info.name2fixturedefs.values() if info else ()):
            for definition in definitions:
                fixture = inspect.unwrap(definition.func)
                words |= _code_words(fixture, inspect.getmodule(fixture) or module, {fixture})
        for mark, rule in _MARKS.items():
            if (fixtures & rule["fixtures"] or words & rule["names"]
                    or words & rule["strings"]):
                item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture(autouse=True)
def _close_connections_of_the_sync_thread(request):
    """A database test leaves its connection open; the next test's consumer (channels closes
    old connections on every message, and asgiref shows it the test thread's) would find it
    and trip pytest-django's guard. Close it in both threads that may hold one."""
    yield
    if request.node.get_closest_marker("django_db"):
        from asgiref.sync import SyncToAsync
        from django.db import connections

        connections.close_all()
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)


async def stop_registry_task():
    """Cancel this process's registry task, which a server process leaves to exit."""
    from wsmonitor import registry

    current = registry.get_registry()
    task, current.task, current.loop = current.task, None, None
    if task is not None and not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
