"""The README's quick start, followed literally in a new virtualenv with the built wheel.

Builds the sdist and the wheel (the wheel from the sdist, as ``python -m build`` does),
installs the wheel into a brand-new virtualenv, makes a project with ``django-admin
startproject``, applies every code block of the README's "Quick start in your project"
section to the file its first line names, serves it with the README's daphne command on a
loopback port, and reads the first ``ws_*`` series from ``/metrics``. pip's cache makes
the second run quick.
"""

import asyncio
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile

import pytest

from wsmonitor import __version__
from wsmonitor.testing import MetricsSnapshot

from .conftest import ROOT, free_port, wait_until

pytestmark = [pytest.mark.packaging, pytest.mark.server, pytest.mark.timeout(900)]

PROJECT = "mysite"
SKIP_COPY = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.pyc", "dist", "build",
                                   "*.egg-info", "*.sqlite3", "node_modules", ".pytest_cache")


def run(*args, cwd=None, env=None, timeout=600):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def quick_start():
    """The README's quick start section: its text and its code blocks."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^## Quick start in your project\n(.*?)^## ", readme, re.S | re.M)
    assert match, "README.md has no 'Quick start in your project' section"
    text = match.group(1)
    return text, re.findall(r"^```(\w+)\n(.*?)^```", text, re.S | re.M)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A brand-new virtualenv with the wheel installed; an environment that runs it."""
    base = tmp_path_factory.mktemp("packaging")
    venv = base / "venv"
    run(sys.executable, "-m", "venv", venv)
    bin_dir = venv / "bin"
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH", "VIRTUAL_ENV")}
    environment["PATH"] = f"{bin_dir}{os.pathsep}{environment.get('PATH', '')}"
    environment["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=SKIP_COPY)
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", "build", env=environment)
    dist = base / "dist"
    built = run(bin_dir / "python", "-m", "build", "--outdir", dist, source, env=environment)
    environment["WSM_BUILD_LOG"] = built.stdout + built.stderr
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    # The README's second install form, with this wheel.
    _, blocks = quick_start()
    wheel_line = f'python -m pip install "dist/wsmonitor-{__version__}-py3-none-any.whl[daphne]"'
    assert any(wheel_line in body for kind, body in blocks if kind == "sh"), wheel_line
    assert wheel.name == f"wsmonitor-{__version__}-py3-none-any.whl"
    # The newest tested pins as constraints: a library's later release cannot turn this red
    # (a W004 from the check below) before scripts/matrix/newest.txt is raised to it.
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", f"{wheel}[daphne]",
        "-c", ROOT / "scripts" / "matrix" / "newest.txt", env=environment)
    return {"bin": bin_dir, "env": environment, "wheel": wheel, "sdist": sdist, "base": base}


def test_the_wheel_and_sdist_hold_everything_the_readme_uses(env):
    names = set(zipfile.ZipFile(env["wheel"]).namelist())
    for needed in ("wsmonitor/management/commands/wsmonitor_sessions.py",
                   "wsmonitor/management/__init__.py", "wsmonitor/compat.py",
                   "wsmonitor/static/wsmonitor/wsmonitor.js"):
        assert needed in names
    source_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "wsmonitor").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert {f"wsmonitor/{name}" for name in
            (s.removeprefix("wsmonitor/") for s in source_files)} <= names
    # The console: its templates, script and style, and the migration of its permissions.
    for needed in ("wsmonitor/templates/wsmonitor/console/base.html",
                   "wsmonitor/templates/wsmonitor/console/index.html",
                   "wsmonitor/templates/wsmonitor/console/session.html",
                   "wsmonitor/templates/wsmonitor/console/_fleet.html",
                   "wsmonitor/templates/wsmonitor/console/_sessions.html",
                   "wsmonitor/templates/wsmonitor/console/_closed.html",
                   "wsmonitor/static/wsmonitor/console/console.js",
                   "wsmonitor/static/wsmonitor/console/console.css",
                   "wsmonitor/migrations/0001_initial.py", "wsmonitor/migrations/__init__.py"):
        assert needed in names, needed
    # The licence, in the wheel's metadata (setuptools puts LICENSE* there by default:
    # dist-info/licenses/ since PEP 639 support, dist-info/ before).
    licences = [name for name in names if ".dist-info/" in name
                and name.rsplit("/", 1)[-1] == "LICENSE"]
    assert len(licences) == 1, sorted(n for n in names if ".dist-info/" in n)
    with zipfile.ZipFile(env["wheel"]) as wheel:
        assert wheel.read(licences[0]) == (ROOT / "LICENSE").read_bytes()
    assert not any(name.startswith(("tests/", "demo_project/", "bench/")) for name in names)
    with tarfile.open(env["sdist"]) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert {"README.md", "LICENSE", "pyproject.toml",
            "wsmonitor/management/commands/wsmonitor_sessions.py"} <= members
    # No build warning, except the one PYTHONDONTWRITEBYTECODE=1 (set on some machines) causes.
    warnings = [line for line in env["env"]["WSM_BUILD_LOG"].splitlines()
                if "warn" in line.lower() and "byte-compiling is disabled" not in line]
    assert warnings == []


def test_the_readme_quick_start_gives_a_first_metric(env, tmp_path):
    environment, bin_dir = env["env"], env["bin"]
    run(bin_dir / "django-admin", "startproject", PROJECT, tmp_path, env=environment)
    text, blocks = quick_start()
    applied = set()
    for kind, body in blocks:
        if kind != "python":
            continue
        header, _, code = body.partition("\n")
        match = re.match(rf"# ({PROJECT}/\S+): (add at the end|a new file|replace the file)",
                         header)
        assert match, f"a quick-start block must say which file it goes to: {header!r}"
        path = tmp_path / match.group(1)
        if match.group(2) == "add at the end":
            path.write_text(path.read_text() + "\n" + code)
        else:
            path.write_text(code)
        applied.add(match.group(1))
    assert applied == {f"{PROJECT}/{name}" for name in
                       ("settings.py", "consumers.py", "asgi.py", "urls.py")}

    manage = (bin_dir / "python", "manage.py")
    for kind, body in blocks:  # the README's own commands, minus the server itself
        for line in body.splitlines():
            if kind == "sh" and line.startswith("python manage.py "):
                run(*manage, *line.split()[2:], cwd=tmp_path, env=environment)
    checked = run(*manage, "check", cwd=tmp_path, env=environment)
    assert "wsmonitor.W00" not in checked.stdout + checked.stderr
    sessions_help = run(*manage, "wsmonitor_sessions", "--help", cwd=tmp_path, env=environment)
    assert "list" in sessions_help.stdout and "close" in sessions_help.stdout

    (daphne_line,) = [line for kind, body in blocks if kind == "sh"
                      for line in body.splitlines() if line.startswith("daphne ")]
    port = free_port()
    command = daphne_line.replace("-p 8000", f"-p {port}").split()
    assert str(port) in command
    log_path = tmp_path / "daphne.log"
    with open(log_path, "wb") as log:
        daphne = subprocess.Popen([bin_dir / command[0], *command[1:]], cwd=tmp_path,
                                  env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        def listening():
            assert daphne.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
                    return True
            except OSError:
                return False

        wait_until(listening, timeout=60, message="daphne serving the new project")
        assert asyncio.run(echo(port, "hello")) == "hello"

        def scrape():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return MetricsSnapshot.parse(r.read().decode())

        labels = {"consumer": "EchoConsumer"}
        snapshot = wait_until(
            lambda: (s := scrape()).value("ws_closes_total", code="1000", **labels) == 1 and s,
            timeout=10, message="the close in /metrics")
        assert snapshot.value("ws_connects_total", **labels) == 1
        assert snapshot.value("ws_connections_active", **labels) == 0
        assert snapshot.value("ws_messages_total", direction="in", **labels) == 1
        assert snapshot.value("ws_messages_total", direction="out", **labels) == 1
    finally:
        daphne.terminate()
        daphne.wait(timeout=15)
    assert "Traceback" not in log_path.read_text()


async def echo(port, text):
    import websockets

    async with asyncio.timeout(10):
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/echo/",
                                      origin=f"http://127.0.0.1:{port}") as ws:
            await ws.send(text)
            return await ws.recv()
