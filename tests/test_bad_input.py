"""The bad-input catalogue: what hostile or broken clients get, and what wsmonitor counts."""

import asyncio
import json
import socket
import struct

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode

from .conftest import Daphne, eventually


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    daphne = Daphne(tmp_path_factory.mktemp("bad-input"), name="bad-input")
    yield daphne
    daphne.stop()


def client(server, path="/ws/echo/", **kwargs):
    return connect(server.ws_url(path), origin=f"http://127.0.0.1:{server.port}",
                   open_timeout=5, close_timeout=5, **kwargs)


def echo(snapshot, name, **labels):
    return snapshot.value(name, consumer="EchoConsumer", **labels)


async def raw_frame(server, frame, path="/ws/echo/"):
    """Send one frame the websockets client would refuse to build; return the close it sees."""
    async with client(server, path) as ws:
        ws.protocol.send_frame(frame)
        ws.send_data()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    return closed.value.rcvd


@pytest.mark.parametrize("frame, what", [
    (Frame(Opcode.TEXT, b"\xff\xfe invalid utf-8"), "invalid UTF-8"),
    *[(Frame(Opcode.CLOSE, struct.pack("!H", code)), f"close code {code}")
      for code in (999, 1004, 1005, 1006, 1016, 2999, 5000)],
])
async def test_protocol_violations_are_dropped_by_daphne_and_count_1006(server, frame, what):
    before = server.scrape()
    # autobahn fails the connection without a close frame: both sides see 1006.
    assert await raw_frame(server, frame) is None, what
    await eventually(lambda: echo(server.scrape(), "ws_closes_total")
                     == echo(before, "ws_closes_total") + 1)
    after = server.scrape()
    assert echo(after, "ws_closes_total", code="1006") == echo(before, "ws_closes_total",
                                                                code="1006") + 1
    assert echo(after, "ws_connections_active") == 0
    assert echo(after, "ws_messages_total", direction="in") == echo(
        before, "ws_messages_total", direction="in")  # the application never saw it


@pytest.mark.parametrize("code, label", [(4999, "4xxx"), (3000, "3xxx"), (4000, "4000")])
async def test_application_close_codes_from_clients_fold(server, code, label):
    before = server.scrape()
    async with client(server) as ws:
        await ws.close(code=code)
    await eventually(lambda: echo(server.scrape(), "ws_closes_total", code=label)
                     == echo(before, "ws_closes_total", code=label) + 1)


async def test_messages_over_daphnes_limit_drop_the_connection(server):
    before = server.scrape()
    async with client(server, max_size=None) as ws:
        await ws.send("x" * (1024 * 1024 + 1))  # daphne's --websocket-max-message-size is 1 MiB
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is None  # no close frame, so the client reports 1006
    await eventually(lambda: echo(server.scrape(), "ws_closes_total", code="1006")
                     == echo(before, "ws_closes_total", code="1006") + 1)
    assert echo(server.scrape(), "ws_messages_total", direction="in") == echo(
        before, "ws_messages_total", direction="in")


@pytest.mark.parametrize("payload, reason", [
    ("not json", "not_json"), ("[1, 2", "not_json"), ("", "binary"), ('{"text": 1}', "invalid"),
    ("[" * 100_000 + "]" * 100_000, "not_json"),  # json.loads raises RecursionError, not ValueError
])
async def test_the_demo_chat_answers_unreadable_messages_and_stays_open(server, payload, reason):
    before = server.scrape()
    async with client(server, "/ws/chat/bad/") as ws:
        # A JSON consumer cannot read binary frames or broken JSON: the demo says so.
        await ws.send(payload or b"\x00binary")
        answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert answer["type"] == "error" and answer["reason"] == reason
        assert "message" in answer["error"]
        await ws.send(json.dumps({"message": "still here"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["message"] == "still here"
    labels = {"consumer": "ChatConsumer"}
    after = server.scrape()
    assert after.value("demo_messages_refused_total", reason=reason, **labels) == before.value(
        "demo_messages_refused_total", reason=reason, **labels) + 1
    assert after.value("ws_errors_total", **labels) == before.value("ws_errors_total", **labels)
    await eventually(lambda: server.scrape().value("ws_closes_total", code="1000", **labels)
                     == before.value("ws_closes_total", code="1000", **labels) + 1)


async def test_series_stay_bounded_whatever_clients_send(server):
    async def variety(index):
        path = f"/ws/chat/room-{index}-%E2%9C%93/"
        async with connect(server.ws_url(path), origin=f"http://127.0.0.1:{server.port}",
                           open_timeout=5, subprotocols=[f"proto-{index}"],
                           additional_headers={"User-Agent": f"agent/{index}"}) as ws:
            await ws.send(json.dumps({"message": f"m{index}", "traceparent": f"00-{index}"}))
            await asyncio.wait_for(ws.recv(), 5)

    def series():
        page = server.scrape()
        return {(name, tuple(sorted(labels.items()))) for name, labels, _ in page.samples
                if name.startswith("ws_")}

    await variety(0)
    baseline = series()
    gate = asyncio.Semaphore(20)

    async def bounded(index):
        async with gate:
            await variety(index)

    await asyncio.gather(*(bounded(i) for i in range(1, 301)))
    grown = series() - baseline
    # Only series of labels from bounded sets may appear (e.g. a bucket's first close code).
    assert all(dict(labels).get("consumer") in {"ChatConsumer", "EchoConsumer", None}
               for _, labels in grown), grown
    assert len(series()) <= len(baseline) + 10


async def test_hostile_strings_stay_inside_one_json_log_line(server):
    path = "/ws/chat/a%0A%7B%22event%22%3A%22forged%22%7D%0D%1B%5B31m/"
    async with client(server, path) as ws:
        await ws.send(json.dumps({"message": "x"}))
        await asyncio.wait_for(ws.recv(), 5)
    lines = [line for line in server.log().splitlines() if line.startswith("{")]
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert not any(e.get("event") == "forged" for e in events)
    assert any(e.get("event") == "ws_open" and "\n" in e.get("path", "") for e in events)


async def test_unrouted_paths_and_refused_origins_are_counted_by_the_middleware(server):
    before = server.scrape()
    with pytest.raises(InvalidStatus) as refused:
        async with connect(server.ws_url("/ws/echo/"), origin="http://evil.example",
                           open_timeout=5):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as refused:
        async with client(server, "/ws/nowhere/"):
            pass
    assert refused.value.response.status_code == 500  # daphne's answer to URLRouter's ValueError
    after = server.scrape()
    labels = {"consumer": "websocket"}  # no consumer ran: the middleware's label
    for reason in ("denied", "no_route"):
        assert after.value("ws_connects_rejected_total", reason=reason, **labels) == before.value(
            "ws_connects_rejected_total", reason=reason, **labels) + 1
    assert after.value("ws_connects_total") == before.value("ws_connects_total")
    assert after.value("ws_errors_total", **labels) == before.value("ws_errors_total", **labels)


async def test_a_client_that_never_completes_the_handshake(server):
    before = server.scrape()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as stalled:
        stalled.sendall(b"GET /ws/echo/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        # Half a request: daphne waits for the rest; the server keeps serving others.
        async with client(server) as ws:
            await ws.send("still serving")
            assert await asyncio.wait_for(ws.recv(), 5) == "still serving"
        during = server.scrape()
        assert echo(during, "ws_connections_active") == 0
        assert during.value("ws_connects_rejected_total") == before.value(
            "ws_connects_rejected_total")


@pytest.mark.parametrize("query, headers, subprotocols", [
    ("reconnect=%C2%B2", {}, None),  # "²": str.isdigit() says yes, int() says no
    ("reconnect=%EF%BC%91", {}, None),  # a full-width "1"
    ("reconnect=%FF%FE&reconnect=3", {}, None),  # undecodable, then repeated
    ("reconnect=" + "%F0%9F%98%80" * 500, {}, None),  # long
    ("traceparent=00-%C2%B2-%00-01&tracestate=%FF", {}, None),
    ("", {"traceparent": "00-" + "f" * 32 + "-" + "0" * 16 + "-ff",
          "User-Agent": "\u00b2\u00ff" * 400}, None),
    ("", {"traceparent": "zz", "tracestate": "x" * 5000}, ["a" * 300, "wsmonitor.v1"]),
])
async def test_hostile_query_strings_headers_and_subprotocols_never_break_a_socket(
        server, query, headers, subprotocols):
    before = server.scrape()
    async with connect(server.ws_url("/ws/echo/?" + query), origin=f"http://127.0.0.1:{server.port}",
                       open_timeout=5, close_timeout=5, additional_headers=headers,
                       subprotocols=subprotocols) as ws:
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), 5) == "still here"
    await eventually(lambda: echo(server.scrape(), "ws_closes_total", code="1000")
                     == echo(before, "ws_closes_total", code="1000") + 1)
    after = server.scrape()
    assert echo(after, "ws_errors_total") == echo(before, "ws_errors_total")
    assert echo(after, "ws_closes_total", code="1011") == echo(before, "ws_closes_total",
                                                               code="1011")


@pytest.fixture(scope="module")
def traced_server(tmp_path_factory):
    """A daphne with a TracerProvider, so wsmonitor reads trace context from JSON messages."""
    daphne = Daphne(tmp_path_factory.mktemp("bad-input-traced"), name="bad-input-traced",
                    app="tests.live_app:application", env={"OTEL_TRACES_EXPORTER": "console"})
    yield daphne
    daphne.stop()


@pytest.mark.parametrize("payload", [
    '{"traceparent":' + "[" * 5000,  # json.loads raises RecursionError, not ValueError
    '{"traceparent":' + "[" * 100000,  # longer than wsmonitor parses for a traceparent
    '{"traceparent": {"traceparent": 1}}',
    '{"traceparent": "00-' + "f" * 32 + '-' + "0" * 16 + '-01"}',  # an invalid span ID
    '["traceparent", 1e999999]',
])
async def test_hostile_trace_context_in_messages_never_breaks_a_socket(traced_server, payload):
    labels = {"consumer": "RawJsonEcho"}
    before = traced_server.scrape()
    async with client(traced_server, "/ws/raw-json/") as ws:
        await ws.send(payload)
        assert await asyncio.wait_for(ws.recv(), 5) == payload[:100]
        await ws.send('{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}')
        assert (await asyncio.wait_for(ws.recv(), 5)).startswith('{"traceparent"')
    await eventually(lambda: traced_server.scrape().value("ws_closes_total", code="1000", **labels)
                     == before.value("ws_closes_total", code="1000", **labels) + 1)
    after = traced_server.scrape()
    assert after.value("ws_errors_total", **labels) == before.value("ws_errors_total", **labels)
