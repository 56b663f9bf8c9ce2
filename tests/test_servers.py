"""The server support matrix: one black-box suite under daphne, uvicorn and gunicorn+uvicorn.

Each test runs the demo under every server (``tests/conftest.py``: ``DaphneServer``,
``Uvicorn`` with the websockets sans-I/O implementation, ``GunicornUvicorn`` with two uvicorn
workers in multiprocess mode), drives it with real sockets and reads ``/metrics`` over HTTP.
Where the servers differ, the tables below hold what each one actually does, so the tests
document it; README "Servers" is the same facts in prose.
"""

import asyncio
import base64
import json
import os
import signal
import struct
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State

from wsmonitor.metrics import close_code_label
from wsmonitor.testing import MetricsSnapshot

from .conftest import SERVERS, established, established_by_pid, eventually

KINDS = ("daphne", "uvicorn", "gunicorn")
NOTHING = MetricsSnapshot([])  # "before" for a fresh server

# --- What each server does (None: no close frame, the client reports 1006) -------------------

#: The application raises after accept: (close code the client gets, code wsmonitor counts).
CRASH = {"daphne": (1011, "1011"), "uvicorn": (None, "1011"), "gunicorn": (None, "1011")}
#: TCP dropped without a close frame: the code the server passes to the app, hence counted.
DROP = {"daphne": "1006", "uvicorn": "1005", "gunicorn": "1005"}
#: A close frame without a status code: (code of the server's answering close frame, counted).
NO_STATUS = {"daphne": (1000, "1005"), "uvicorn": (1005, "1005"), "gunicorn": (1005, "1005")}
#: Largest message the server accepts (daphne --websocket_max_message_size, uvicorn --ws-max-size).
MAX_SIZE = {"daphne": 1024 * 1024, "uvicorn": 16 * 1024 * 1024, "gunicorn": 16 * 1024 * 1024}
#: One byte over that limit, or a text frame with invalid UTF-8: (client gets, counted).
OVERSIZED = {"daphne": (None, "1006"), "uvicorn": (1009, "1009"), "gunicorn": (1009, "1009")}
BAD_UTF8 = {"daphne": (None, "1006"), "uvicorn": (1007, "1007"), "gunicorn": (1007, "1007")}
#: SIGTERM with connections open: (client gets, code in wsmonitor's ws_close, its reason).
SIGTERM = {"daphne": (None, 1006, "server_shutdown"), "uvicorn": (1012, 1012, None),
           "gunicorn": (1012, 1012, None)}


def client(server, path="/ws/echo/", **kwargs):
    return connect(server.ws_url(path), origin=f"http://127.0.0.1:{server.port}",
                   open_timeout=10, close_timeout=5, **kwargs)


async def scrape(server):
    return await asyncio.to_thread(server.scrape)


def echo(snapshot, name, **labels):
    return snapshot.value(name, consumer="EchoConsumer", **labels)


def rcvd_code(closed):
    """The close code the client received, None when no close frame arrived (1006)."""
    return None if closed.rcvd is None else int(closed.rcvd.code)


async def closed_by_server(ws, timeout=10):
    with pytest.raises(ConnectionClosed) as closed:
        while True:  # anything still in flight first
            await asyncio.wait_for(ws.recv(), timeout)
    return closed.value


async def settled(server):
    """Wait until no connection is open on the server, by its gauge and by the kernel."""
    await eventually(lambda: server.scrape().value("ws_connections_active") == 0,
                     message=f"{server.kind}: gauge back to 0")
    await eventually(lambda: established(server.port) == 0,
                     message=f"{server.kind}: no ESTABLISHED socket")
    return await scrape(server)


async def counted_close(server, before, label, consumer="EchoConsumer"):
    """Wait for one more close counted under ``label``; return the snapshot."""
    target = before.value("ws_closes_total", consumer=consumer, code=label) + 1
    await eventually(lambda: server.scrape().value(
        "ws_closes_total", consumer=consumer, code=label) == target,
        message=f"{server.kind}: close counted as {label}")
    return await scrape(server)


@pytest.fixture(scope="module", params=KINDS)
def server(request, tmp_path_factory):
    """One server of each kind, shared by the tests that compare before/after values."""
    # The demo plus a consumer that raises on purpose (tests/live_app.py).
    started = SERVERS[request.param](tmp_path_factory.mktemp(request.param), name=request.param,
                                     app="tests.live_app:application")
    yield started
    started.stop()


# --- Lifecycle, close codes, gauge ----------------------------------------------------------

async def test_echo_and_client_close_codes_are_counted(server):
    before = await settled(server)
    sockets = [await client(server) for _ in range(4)]
    for index, ws in enumerate(sockets):
        await ws.send(f"hello {index}")
        assert await asyncio.wait_for(ws.recv(), 5) == f"hello {index}"
    snapshot = await scrape(server)
    assert echo(snapshot, "ws_connections_active") == 4 == established(server.port)
    for ws, code in zip(sockets, (1000, 1001, 4000, 4321), strict=True):
        await ws.close(code=code)  # 4000 is declared by the demo; 4321 folds to 4xxx
    after = await settled(server)
    assert {label: echo(after, "ws_closes_total", code=label) - echo(
        before, "ws_closes_total", code=label) for label in ("1000", "1001", "4000", "4xxx")} == {
        "1000": 1, "1001": 1, "4000": 1, "4xxx": 1}
    assert echo(after, "ws_closes_total") - echo(before, "ws_closes_total") == 4
    assert echo(after, "ws_connects_total") - echo(before, "ws_connects_total") == 4


async def test_abrupt_drop_is_counted_as_the_server_reports_it(server):
    before = await settled(server)
    ws = await client(server)
    await ws.send("x")
    await asyncio.wait_for(ws.recv(), 5)
    ws.transport.abort()  # no close frame: TCP reset
    # uvicorn passes 1005 to the application for a lost connection (uvicorn#1753), not 1006.
    after = await counted_close(server, before, DROP[server.kind])
    assert echo(after, "ws_closes_total") - echo(before, "ws_closes_total") == 1
    await settled(server)


async def test_gauge_follows_the_kernel_count(server):
    await settled(server)
    sockets = []
    for step in range(3):
        sockets += [await client(server) for _ in range(4)]
        for ws in sockets[-4:]:  # the handshake completed on the server too
            await ws.send("x")
            await asyncio.wait_for(ws.recv(), 5)
        snapshot = await scrape(server)
        assert echo(snapshot, "ws_connections_active") == established(server.port) == 4 * (step + 1)
    for ws in sockets[:6]:
        ws.transport.abort()
    for ws in sockets[6:]:
        await ws.close()
    await settled(server)


async def test_application_exception(server):
    before = await settled(server)
    async with client(server, "/ws/raises/") as ws:
        await ws.send("anything")  # the handler raises
        closed = await closed_by_server(ws)
    client_sees, counted = CRASH[server.kind]
    assert rcvd_code(closed) == client_sees
    after = await counted_close(server, before, counted, consumer="RaisesEveryMessage")
    labels = {"consumer": "RaisesEveryMessage", "stage": "receive"}
    assert after.value("ws_errors_total", **labels) - before.value("ws_errors_total", **labels) == 1
    await settled(server)


async def test_message_counts_match_what_clients_counted(server):
    before = await settled(server)
    sent = received = sent_bytes = 0
    sockets = [await client(server) for _ in range(5)]
    for round_ in range(20):
        for index, ws in enumerate(sockets):
            payload = f"{index}-{round_}-" + "é" * round_
            await ws.send(payload)
            sent += 1
            sent_bytes += len(payload.encode())
        for ws in sockets:
            await asyncio.wait_for(ws.recv(), 5)
            received += 1
    for ws in sockets:
        await ws.close()
    after = await settled(server)

    def diff(name, **labels):
        return echo(after, name, **labels) - echo(before, name, **labels)

    assert diff("ws_messages_total", direction="in") == sent == 100
    assert diff("ws_messages_total", direction="out") == received == 100
    assert diff("ws_message_size_bytes_sum", direction="in") == sent_bytes
    assert diff("ws_message_handling_seconds_count") == sent


# --- Protocol edges -------------------------------------------------------------------------

async def test_close_frame_without_status(server):
    before = await settled(server)
    async with client(server) as ws:
        ws.protocol.send_frame(Frame(Opcode.CLOSE, b""))
        ws.send_data()
        closed = await closed_by_server(ws)
    answer, counted = NO_STATUS[server.kind]
    assert rcvd_code(closed) == answer
    await counted_close(server, before, counted)


async def test_message_over_the_servers_limit(server):
    before = await settled(server)
    limit = MAX_SIZE[server.kind]
    below = limit > MAX_SIZE["daphne"]  # what daphne drops, uvicorn echoes
    if below:
        async with client(server, max_size=None) as ws:
            await ws.send(b"y" * (MAX_SIZE["daphne"] + 1))
            assert len(await asyncio.wait_for(ws.recv(), 10)) == MAX_SIZE["daphne"] + 1
    # compression=None: with permessage-deflate (uvicorn offers it) the limit applies to the
    # decompressed size and the wire carries a few kilobytes.
    async with client(server, max_size=None, compression=None) as ws:
        try:
            await ws.send(b"x" * (limit + 1))
            closed = await closed_by_server(ws)
        except ConnectionClosed as during_send:  # the server closed before the last byte
            closed = during_send
    client_sees, counted = OVERSIZED[server.kind]
    assert rcvd_code(closed) == client_sees
    after = await counted_close(server, before, counted)
    messages_in = echo(after, "ws_messages_total", direction="in") - echo(
        before, "ws_messages_total", direction="in")
    assert messages_in == (1 if below else 0)  # never the oversized one


async def test_invalid_utf8(server):
    before = await settled(server)
    async with client(server) as ws:
        ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe invalid utf-8"))
        ws.send_data()
        closed = await closed_by_server(ws)
    client_sees, counted = BAD_UTF8[server.kind]
    assert rcvd_code(closed) == client_sees
    after = await counted_close(server, before, counted)
    assert echo(after, "ws_messages_total", direction="in") == echo(
        before, "ws_messages_total", direction="in")  # the application never saw it


async def test_the_server_answers_protocol_pings_itself(server):
    before = await settled(server)
    async with client(server, ping_interval=None) as ws:
        for payload in (b"one", b"two", b"three"):
            latency = await asyncio.wait_for(await ws.ping(payload), 5)
            assert latency >= 0
    after = await settled(server)
    assert echo(after, "ws_messages_total") == echo(before, "ws_messages_total")  # unseen


def test_close_code_label_takes_int_enums():
    """uvicorn hands the application websockets' ``CloseCode`` members, an IntEnum."""
    assert close_code_label(CloseCode.NO_STATUS_RCVD) == "1005"
    assert close_code_label(CloseCode.MESSAGE_TOO_BIG) == "1009"
    assert close_code_label(True) == "invalid"


# --- Keepalive: the server's own pings, idle peers, a server-side close ---------------------

class RawClient:
    """A WebSocket client that completes the handshake, then never writes (no pongs)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server, path="/ws/echo/"):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: http://127.0.0.1:{server.port}\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def until_closed(self, timeout):
        """Read until the server ends the TCP connection: the opcodes and close code it sent."""
        data = b""
        try:
            while chunk := await asyncio.wait_for(self.reader.read(65536), timeout):
                data += chunk
        except ConnectionResetError:
            pass
        self.writer.close()
        opcodes, close_code = [], None
        while len(data) >= 2:  # server frames are unmasked; these are short
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            payload, data = data[2:2 + length], data[2 + length:]
            opcodes.append(Opcode(opcode))
            if opcode == Opcode.CLOSE and len(payload) >= 2:
                close_code = struct.unpack("!H", payload[:2])[0]
        return opcodes, close_code


@pytest.mark.parametrize("kind", KINDS)
async def test_keepalive_and_a_server_side_close(start_server, kind):
    # daphne: --ping-interval 1 --ping-timeout 2; uvicorn: --ws-ping-interval 1 --ws-ping-timeout 1.
    keepalive = (1, 2) if kind == "daphne" else (1, 1)
    server = start_server(kind, keepalive=keepalive, env={
        "WSMONITOR_HEARTBEAT_INTERVAL": "0.3", "WSMONITOR_HEARTBEAT_TIMEOUT": "0.6"})
    started = time.monotonic()
    answering = await client(server, ping_interval=None)  # answers pings, sends no data
    silent = await RawClient.open(server)
    # The application's own close: wsmonitor's heartbeat closes a client that stopped
    # answering with 4408 through self.close(4408), on every server alike.
    async with client(server, "/ws/chat/heartbeat/", ping_interval=None) as zombie:
        ping = json.loads(await asyncio.wait_for(zombie.recv(), 5))
        await zombie.send(json.dumps({"type": "wsmonitor.pong", "id": ping["id"]}))
        closed = await closed_by_server(zombie)
    assert rcvd_code(closed) == 4408
    await counted_close(server, NOTHING, "4408", consumer="ChatConsumer")

    # Both servers ping idle peers on their own and drop one that leaves a ping unanswered.
    opcodes, close_code = await silent.until_closed(timeout=10)
    assert opcodes[0] == Opcode.PING
    if kind == "daphne":
        assert close_code is None  # autobahn drops the TCP connection: 1006 on both sides
        await counted_close(server, NOTHING, "1006")
    else:
        # uvicorn sends a 1011 close frame ("keepalive ping timeout"), yet tells the app 1005.
        assert close_code == 1011
        await counted_close(server, NOTHING, "1005")
    # The peer that answers stays, however idle: watched (not awaited) for 3 ping rounds.
    await asyncio.sleep(max(0.0, started + 3 * sum(keepalive) - time.monotonic()))
    assert answering.state is State.OPEN
    await answering.send("still here")
    assert await asyncio.wait_for(answering.recv(), 5) == "still here"
    assert echo(await scrape(server), "ws_connections_active") == 1
    await answering.close()
    await settled(server)


# --- SIGTERM --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
async def test_sigterm(start_server, kind):
    server = start_server(kind)
    sockets = [await client(server) for _ in range(4)]
    for ws in sockets:
        await ws.send("x")
        await asyncio.wait_for(ws.recv(), 5)
    opened = {e["session_id"] for e in server.events("ws_open")}
    assert len(opened) == 4
    server.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(server.process.wait, 20)
    client_sees, logged_code, reason = SIGTERM[kind]
    for ws in sockets:
        assert rcvd_code(await closed_by_server(ws)) == client_sees
    closes = server.events("ws_close")
    assert {e["session_id"] for e in closes} == opened  # every connection recorded once
    assert len(closes) == 4
    assert {(e["code"], e.get("reason")) for e in closes} == {(logged_code, reason)}
    if kind == "gunicorn":  # the workers' files keep what they counted before exiting
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(server.metrics_dir))
        left = MetricsSnapshot.parse(generate_latest(registry).decode())
        assert echo(left, "ws_closes_total", code="1012") == 4
        assert echo(left, "ws_connections_active") == 0


# --- gunicorn: two uvicorn workers in multiprocess mode -------------------------------------

async def test_gunicorn_workers_share_one_exact_gauge_and_a_killed_one_leaves_it(start_server):
    server = start_server("gunicorn")
    workers = server.workers()
    assert len(workers) == 2 and server.live_pids() == workers
    sockets = []
    deadline = time.monotonic() + 20
    # The kernel hands each connection to whichever worker accepts first: open until both
    # hold some (usually 4-10 connections).
    while min(established_by_pid(server.port).get(pid, 0) for pid in workers) < 2:
        assert time.monotonic() < deadline and len(sockets) < 80, established_by_pid(server.port)
        ws = await client(server)
        await ws.send("x")
        await asyncio.wait_for(ws.recv(), 5)
        sockets.append(ws)
    spread = established_by_pid(server.port)
    assert set(spread) == workers and sum(spread.values()) == len(sockets)
    for _ in range(6):  # any worker may answer the scrape: each gives the sum
        snapshot = await scrape(server)
        assert echo(snapshot, "ws_connections_active") == len(sockets)
    closes_before = echo(snapshot, "ws_closes_total")

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    lost = 0
    for ws in sockets:  # the victim's clients lost their TCP connection, no close frame
        try:
            await ws.send("y")
            assert await asyncio.wait_for(ws.recv(), 5) == "y"
        except ConnectionClosed as closed:
            assert closed.rcvd is None
            lost += 1
    assert lost == spread[victim]
    await eventually(lambda: len(server.workers()) == 2 and victim not in server.workers(),
                     message="gunicorn respawned the worker")
    survivors = len(sockets) - lost
    await eventually(lambda: echo(server.scrape(), "ws_connections_active") == survivors,
                     message="the dead worker's connections left the gauge")
    # The dead pid's files were swept; the new worker marks itself once the app is loaded.
    await eventually(lambda: server.live_pids() == server.workers(), message="live pids")
    snapshot = await scrape(server)
    assert echo(snapshot, "ws_connects_total") == len(sockets)  # its counters stay
    assert echo(snapshot, "ws_closes_total") == closes_before  # a SIGKILL records no close
    for ws in sockets:
        await ws.close()
    after = await settled(server)
    assert echo(after, "ws_closes_total") - closes_before == survivors
