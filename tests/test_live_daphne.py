"""Black-box tests against a real daphne serving the demo, read through /metrics over HTTP."""

import asyncio
import json
import urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .conftest import established, eventually


def client(server, path):
    origin = f"http://127.0.0.1:{server.port}"
    return connect(server.ws_url(path), origin=origin, open_timeout=5, close_timeout=5)


def echo_value(snapshot, name, **labels):
    return snapshot.value(name, consumer="EchoConsumer", **labels)


async def test_abrupt_drop_counts_1006_and_the_gauge_matches_the_kernel(live_daphne):
    server = live_daphne
    sockets = [await client(server, "/ws/echo/") for _ in range(4)]
    for ws in sockets:  # the handshake completed on the server too
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "ping"
    snapshot = server.scrape()
    assert echo_value(snapshot, "ws_connections_active") == 4
    assert established(server.port) == 4  # independent count: the kernel's

    sockets[0].transport.abort()  # no close frame: TCP reset
    await eventually(lambda: echo_value(server.scrape(), "ws_closes_total", code="1006") == 1,
                     message="1006 counted")
    await sockets[1].close(code=1000)
    await sockets[2].close(code=4000)  # declared by the demo
    await sockets[3].close(code=4321)  # undeclared: folds to 4xxx
    await eventually(lambda: echo_value(server.scrape(), "ws_connections_active") == 0,
                     message="gauge back to 0")
    snapshot = server.scrape()
    assert {code: echo_value(snapshot, "ws_closes_total", code=code)
            for code in ("1006", "1000", "4000", "4xxx")} == {
        "1006": 1, "1000": 1, "4000": 1, "4xxx": 1}
    assert echo_value(snapshot, "ws_closes_total") == 4
    assert echo_value(snapshot, "ws_connects_total") == 4
    assert snapshot.value("process_open_fds") > 0  # default collectors stay exported
    await eventually(lambda: established(server.port) == 0, message="sockets gone")


async def test_server_exception_is_1011_to_the_client_and_counted(start_daphne):
    server = start_daphne(app="tests.live_app:application")
    async with client(server, "/ws/raises/") as ws:
        await ws.send("anything")  # the handler raises
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed as closed:
            assert closed.rcvd.code == 1011
    labels = {"consumer": "RaisesEveryMessage"}
    await eventually(lambda: server.scrape().value("ws_closes_total", code="1011", **labels) == 1)
    snapshot = server.scrape()
    assert snapshot.value("ws_errors_total", stage="receive", **labels) == 1
    assert snapshot.value("ws_connections_active", **labels) == 0


async def test_chat_room_through_the_in_memory_layer(live_daphne):
    await chat_between(live_daphne, live_daphne)


async def test_chat_room_through_real_redis(start_daphne, redis_url):
    node_a = start_daphne(env={"REDIS_URL": redis_url}, name="node-a")
    node_b = start_daphne(env={"REDIS_URL": redis_url}, name="node-b")
    await chat_between(node_a, node_b)


async def chat_between(server_a, server_b):
    room = f"/ws/chat/room-{server_a.port}/"
    async with client(server_a, room) as alice, client(server_b, room) as bob:
        await eventually(lambda: server_b.scrape().value(
            "ws_connections_active", consumer="ChatConsumer") >= 1)
        await alice.send(json.dumps({"message": "hi bob"}))
        await bob.send(json.dumps({"message": "hi alice"}))
        got_alice = [json.loads(await asyncio.wait_for(alice.recv(), 5)) for _ in range(2)]
        got_bob = [json.loads(await asyncio.wait_for(bob.recv(), 5)) for _ in range(2)]
    assert sorted(m["message"] for m in got_alice) == ["hi alice", "hi bob"]
    assert got_alice == got_bob or sorted(map(str, got_alice)) == sorted(map(str, got_bob))
    assert len({m["session_id"] for m in got_alice}) == 2
    for server in {server_a, server_b}:
        await eventually(lambda: server.scrape().value(
            "ws_connections_active", consumer="ChatConsumer") == 0)


def test_chat_page_and_metrics_are_served(live_daphne):
    with urllib.request.urlopen(live_daphne.http_url("/"), timeout=5) as response:
        page = response.read().decode()
    assert response.status == 200 and "/ws/chat/" in page
    with urllib.request.urlopen(live_daphne.http_url("/metrics"), timeout=5) as response:
        assert "ws_connections_capacity" in response.read().decode()
