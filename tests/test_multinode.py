"""Several daphne processes and nodes: real Redis, real nginx, read through /metrics over HTTP."""

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from wsmonitor import registry

from .conftest import ROOT, free_port, need, wait_until
from .test_live_daphne import client

CHAT = "ChatConsumer"


def unique(name):
    return f"{name}-{uuid.uuid4().hex[:6]}"


async def scrape(server):
    return await asyncio.to_thread(server.scrape)


async def total(servers, name, **labels):
    snapshots = await asyncio.gather(*(scrape(server) for server in servers))
    return sum(snapshot.value(name, **labels) for snapshot in snapshots)


async def poll(predicate, timeout, message):
    """Await an async ``predicate`` until truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.05)


# --- Chat across two nodes ------------------------------------------------------------------

async def test_two_nodes_chat_after_idling_past_redis_socket_timeout(start_daphne, redis_url):
    """Each node counts its own connection; delivery time is observed where the event lands;
    with the demo's socket_timeout None an idle consumer outlives redis-py's 5 s default."""
    names = unique("node-a"), unique("node-b")
    node_a, node_b = (start_daphne(env={"REDIS_URL": redis_url}, name=name) for name in names)
    room = f"/ws/chat/{unique('room')}/"
    async with client(node_a, room) as alice, client(node_b, room) as bob:
        for server, name in zip((node_a, node_b), names, strict=True):
            snapshot = await poll(lambda server=server: _active(server, 1), 5, "open counted")
            assert snapshot.label_values("ws_connections_active", "node") == {name}
        await asyncio.sleep(6)  # idle on purpose: longer than channels_redis's 5 s read
        await alice.send(json.dumps({"message": "hi bob"}))
        assert json.loads(await asyncio.wait_for(bob.recv(), 5))["message"] == "hi bob"
        await bob.send(json.dumps({"message": "hi alice"}))
        got = [json.loads(await asyncio.wait_for(alice.recv(), 5))["message"] for _ in range(2)]
        assert got == ["hi bob", "hi alice"]
        assert json.loads(await asyncio.wait_for(bob.recv(), 5))["message"] == "hi alice"
        for server in (node_a, node_b):
            snapshot = await scrape(server)
            assert snapshot.value("ws_layer_delivery_seconds_count", consumer=CHAT) == 2
            assert snapshot.value("ws_layer_sends_total", kind="group_send", outcome="ok") == 1
            assert snapshot.value("ws_layer_group_size_sum") == 2
            assert snapshot.value("ws_errors_total") == 0
            assert snapshot.value("ws_connections_active", consumer=CHAT) == 1


async def _active(server, count):
    snapshot = await scrape(server)
    return snapshot.value("ws_connections_active", consumer=CHAT) == count and snapshot


# --- The 20 x 20 capacity burst -------------------------------------------------------------

CLIENTS = MESSAGES = 20


async def burst(servers):
    """20 clients in one room, each sending 20 messages at once; returns what arrived."""
    room = f"/ws/chat/{unique('burst')}/"
    sockets = [await client(servers[i % len(servers)], room) for i in range(CLIENTS)]
    counts = [0] * CLIENTS

    async def read(index, ws):
        try:
            async for _ in ws:
                counts[index] += 1
        except ConnectionClosed:
            pass

    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
    payloads = [json.dumps({"message": f"m{n}"}) for n in range(MESSAGES)]

    async def send_all(ws):
        for payload in payloads:  # 20 messages, no waiting for answers
            await ws.send(payload)

    await asyncio.gather(*(send_all(ws) for ws in sockets))
    expected = CLIENTS * CLIENTS * MESSAGES

    async def group_sends_done():
        return await total(servers, "ws_layer_sends_total", kind="group_send") == CLIENTS * MESSAGES

    await poll(group_sends_done, 30, "every group_send done")

    async def accounted():
        dropped = await total(servers, "ws_layer_messages_dropped_total")
        return sum(counts) + dropped == expected

    await poll(accounted, 30, "received + dropped == sent")
    settled = sum(counts)
    await asyncio.sleep(0.5)  # nothing may arrive after the books balanced
    assert sum(counts) == settled
    delivered = await total(servers, "ws_layer_delivery_seconds_count", consumer=CHAT)
    dropped = await total(servers, "ws_layer_messages_dropped_total")
    for ws in sockets:
        await ws.close()
    await asyncio.gather(*readers)
    by_kind = {kind: await total(servers, "ws_layer_messages_dropped_total", kind=kind)
               for kind in ("group_send", "receive")}
    print(f"\nburst over {len(servers)} node(s): {expected} deliveries, {settled} received, "
          f"{dropped:g} dropped {by_kind}")
    return expected, settled, dropped, delivered


@pytest.mark.parametrize("layer", ["memory", "redis", "pubsub"])
async def test_capacity_burst_reports_every_lost_delivery(start_daphne, layer, request):
    if layer == "memory":
        servers = [start_daphne(name=unique("burst"))]
    else:
        redis_url = request.getfixturevalue("redis_url")
        env = {"REDIS_URL": redis_url, "DEMO_CHANNEL_LAYER": layer}
        servers = [start_daphne(env=env, name=unique(f"burst-{i}")) for i in range(2)]
    expected, received, dropped, delivered = await burst(servers)
    assert received + dropped == expected == 8000
    if layer == "pubsub":
        # Pub/sub payloads have no bytes upstream readers skip: no send time travels.
        assert delivered == 0
        assert dropped == 0  # no capacity in pub/sub
    else:
        assert delivered == received  # each event reached a handler once, and went out once
        assert dropped > 1000  # default capacity 100: most deliveries are lost


# --- Session registry -----------------------------------------------------------------------

def manage(*args, env):
    full_env = {**os.environ, "DJANGO_SETTINGS_MODULE": "demo_project.settings", **env}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=30)


async def test_registry_lists_both_nodes_and_closes_one_session_by_id(
        start_daphne, redis_url, tmp_path):
    env = {"REDIS_URL": redis_url, "WSMONITOR_REGISTRY_TTL": "3",
           "DEMO_DB": str(tmp_path / "demo.sqlite3")}
    names = unique("reg-a"), unique("reg-b")
    node_a = start_daphne(env=env, name=names[0])
    node_b = start_daphne(env=env, name=names[1])
    room = f"/ws/chat/{unique('room')}/"
    async with client(node_a, room) as alice, client(node_b, room) as bob:
        await alice.send(json.dumps({"message": "who am i"}))
        alice_id = json.loads(await asyncio.wait_for(bob.recv(), 5))["session_id"]
        assert json.loads(await asyncio.wait_for(alice.recv(), 5))["session_id"] == alice_id

        def listed():
            return [s for s in registry.list_sessions(redis_url) if s["node"] in names]

        await asyncio.to_thread(wait_until, lambda: len(listed()) == 2, 10, 0.05,
                                "both sessions registered")
        out = await asyncio.to_thread(manage, "wsmonitor_sessions", "list", "--json", env=env)
        assert out.returncode == 0, out.stderr
        sessions = [s for s in json.loads(out.stdout)["sessions"] if s["node"] in names]
        by_node = {s["node"]: s for s in sessions}
        assert by_node[names[0]]["session_id"] == alice_id
        assert {s["consumer"] for s in sessions} == {CHAT}
        assert {s["path"] for s in sessions} == {room}
        assert all(time.time() - s["opened_at"] < 60 for s in sessions)
        table = (await asyncio.to_thread(
            manage, "wsmonitor_sessions", "list", "--node", names[1], env=env)).stdout
        assert by_node[names[1]]["session_id"] in table and alice_id not in table

        out = await asyncio.to_thread(
            manage, "wsmonitor_sessions", "close", alice_id, "--code", "4000", env=env)
        assert out.returncode == 0, out.stderr
        assert f"Closed {alice_id}" in out.stdout
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(alice.recv(), 5)
        assert closed.value.rcvd.code == 4000
        snapshot = await scrape(node_a)
        assert snapshot.value("ws_closes_total", consumer=CHAT, code="4000") == 1
        # The node that held the socket records who asked: the command, not the console.
        await asyncio.to_thread(wait_until, lambda: [
            e["closed_by"] for e in node_a.events("ws_close")
            if e.get("session_id") == alice_id] == ["command"], 5, 0.1, "ws_close by command")
        assert snapshot.value("ws_connections_active", consumer=CHAT) == 0
        assert [s["node"] for s in listed()] == [names[1]]

        bad = await asyncio.to_thread(manage, "wsmonitor_sessions", "close", alice_id, env=env)
        assert bad.returncode != 0 and "No open session" in bad.stderr

        # A node that dies takes its sessions with it, after REGISTRY_TTL.
        node_b.process.send_signal(signal.SIGKILL)
        node_b.process.wait(timeout=10)
        await asyncio.to_thread(wait_until, lambda: listed() == [], 8, 0.2, "node B expired")


# --- Multiprocess mode ----------------------------------------------------------------------

async def test_multiprocess_gauge_survives_a_killed_process(start_daphne, tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    first = start_daphne(env=env, name="host")
    second = start_daphne(env=env, name="host")
    sockets = [await client(first, "/ws/echo/") for _ in range(2)]
    sockets += [await client(second, "/ws/echo/") for _ in range(3)]
    for ws in sockets:
        await ws.send("x")
        await asyncio.wait_for(ws.recv(), 5)
    pids = {str(first.process.pid), str(second.process.pid)}
    snapshot = await scrape(second)  # one process answers for all of them
    assert snapshot.value("ws_connections_active", consumer="EchoConsumer") == 5
    assert snapshot.label_values("ws_process_open_fds", "pid") == pids
    assert snapshot.value("ws_process_open_fds", pid=first.process.pid) > 0
    assert snapshot.value("process_open_fds") == 0  # not exported in this mode

    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=10)
    dead = metrics_dir / f"gauge_livesum_{first.process.pid}.db"
    assert dead.exists()
    third = start_daphne(env=env, name="host")  # its start-up sweeps the dead process
    assert not dead.exists()
    sockets.append(await client(third, "/ws/echo/"))
    await sockets[-1].send("x")
    await asyncio.wait_for(sockets[-1].recv(), 5)
    snapshot = await scrape(second)
    assert snapshot.value("ws_connections_active", consumer="EchoConsumer") == 4
    assert snapshot.value("ws_connects_total", consumer="EchoConsumer") == 6  # counters stay
    assert snapshot.label_values("ws_process_open_fds", "pid") == {
        str(second.process.pid), str(third.process.pid)}
    for ws in sockets[2:]:
        await ws.close()


def test_scrape_sweeps_dead_processes(tmp_path):
    from wsmonitor import multiprocess

    corpse = subprocess.Popen([sys.executable, "-c", "pass"])
    corpse.wait(timeout=10)
    for prefix in ("gauge_livesum", "gauge_liveall", "counter"):
        (tmp_path / f"{prefix}_{corpse.pid}.db").write_bytes(b"")
    (tmp_path / f"gauge_livesum_{os.getppid()}.db").write_bytes(b"")  # alive
    assert multiprocess.sweep(str(tmp_path)) == {corpse.pid}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{corpse.pid}.db", f"gauge_livesum_{os.getppid()}.db"])


# --- nginx in front of two nodes ------------------------------------------------------------

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None)
SITE = ROOT / "deploy" / "nginx" / "wsmonitor.conf"


class Nginx:
    """nginx on a loopback port, running deploy/nginx/wsmonitor.conf with the test's ports."""

    def __init__(self, prefix: Path, upstream_ports, read_timeout=None):
        self.port = free_port()
        prefix.mkdir()
        site = SITE.read_text()
        replacements = {"listen 80;": f"listen 127.0.0.1:{self.port};",
                        "server 127.0.0.1:8001;": f"server 127.0.0.1:{upstream_ports[0]};",
                        "server 127.0.0.1:8002;": f"server 127.0.0.1:{upstream_ports[1]};"}
        if read_timeout:
            replacements["proxy_read_timeout 1h;"] = f"proxy_read_timeout {read_timeout};"
        for old, new in replacements.items():
            assert old in site, old
            site = site.replace(old, new)
        temp = "\n".join(f"  {kind}_temp_path {prefix / kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (prefix / "nginx.conf").write_text(
            f"worker_processes 1;\npid {prefix / 'nginx.pid'};\nerror_log {prefix / 'error.log'};\n"
            f"events {{ worker_connections 256; }}\n"
            f"http {{\n  access_log {prefix / 'access.log'};\n{temp}\n{site}\n}}\n")
        self.prefix = prefix
        self.process = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e",
             str(prefix / "error.log"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, timeout=10, message="nginx listening")
        except BaseException:
            self.stop()
            raise

    def _ready(self):
        if self.process.poll() is not None:
            raise RuntimeError((self.prefix / "error.log").read_text(errors="replace"))
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def ws_url(self, path):
        return f"ws://127.0.0.1:{self.port}{path}"

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def start_nginx(tmp_path):
    need(NGINX is not None, "nginx is not installed (apt-get install -y nginx)")
    started = []

    def start(upstreams, **kwargs):
        server = Nginx(tmp_path / f"nginx-{len(started)}", [s.port for s in upstreams], **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def test_nginx_example_spreads_websockets_over_two_nodes(start_nginx, start_daphne,
                                                               redis_url):
    env = {"REDIS_URL": redis_url}
    nodes = [start_daphne(env=env, args=["--proxy-headers"], name=unique(f"nginx-{i}"))
             for i in range(2)]
    proxy = start_nginx(nodes)
    room = f"/ws/chat/{unique('room')}/"
    sockets = [await client(proxy, room) for _ in range(4)]
    for node in nodes:  # least_conn: two each
        await poll(lambda node=node: _active(node, 2), 5, "two connections per node")
    await sockets[0].send(json.dumps({"message": "through nginx"}))
    for ws in sockets:  # all four, on both nodes, through the shared layer
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["message"] == "through nginx"
    for ws in sockets:
        await ws.close()
    for node in nodes:
        await poll(lambda node=node: _closed(node, "1000", 2), 10, "closes counted")


async def _closed(node, code, count):
    return (await scrape(node)).value("ws_closes_total", consumer=CHAT, code=code) == count


async def test_nginx_idle_timeout_is_1006_on_both_sides(start_nginx, start_daphne):
    nodes = [start_daphne(name=unique(f"idle-{i}")) for i in range(2)]
    proxy = start_nginx(nodes, read_timeout="1s")
    ws = await client(proxy, "/ws/echo/")
    await ws.send("x")
    await asyncio.wait_for(ws.recv(), 5)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 10)  # say nothing: nginx gives up after 1 s
    assert closed.value.rcvd is None  # no close frame: the client reports 1006
    assert ws.close_code == 1006

    async def counted():
        return await total(nodes, "ws_closes_total", consumer="EchoConsumer", code="1006") == 1

    await poll(counted, 10, "1006 counted by the node")
