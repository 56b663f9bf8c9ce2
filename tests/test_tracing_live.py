"""The demo under a real daphne, printing its spans with OTEL_TRACES_EXPORTER=console."""

import asyncio
import json
import urllib.request

from websockets.asyncio.client import connect

from .conftest import eventually

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def printed_spans(server):
    spans = []
    for line in server.log().splitlines():
        if line.startswith("{") and '"context"' in line:
            spans.append(json.loads(line))
    return spans


async def test_console_exporter_prints_the_connection_span(start_daphne):
    server = start_daphne(env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "demo-test"})
    async with connect(server.ws_url("/ws/echo/"), origin=f"http://127.0.0.1:{server.port}",
                       additional_headers={"traceparent": TRACEPARENT,
                                           "User-Agent": "live-test/1"},
                       open_timeout=5, close_timeout=5) as ws:
        for index in range(3):
            await ws.send(f"m{index}")
            assert await asyncio.wait_for(ws.recv(), 5) == f"m{index}"
        await ws.close(code=1000)
    with urllib.request.urlopen(server.http_url("/"), timeout=5) as response:
        assert response.status == 200

    def connection_span():
        return [s for s in printed_spans(server) if s["name"] == "ws.connection"]

    (span,) = await eventually(connection_span, message="ws.connection printed")
    assert span["context"]["trace_id"] == "0x" + TRACE_ID
    assert span["parent_id"] == "0x00f067aa0ba902b7"
    assert span["kind"] == "SpanKind.SERVER"
    assert span["attributes"]["websocket.close.code"] == 1000
    assert span["attributes"]["client.address"] == "127.0.0.1"
    assert span["attributes"]["user_agent.original"] == "live-test/1"
    assert span["attributes"]["websocket.messages.received"] == 3
    assert span["resource"]["attributes"]["service.name"] == "demo-test"
    spans = await eventually(lambda: len(printed_spans(server)) >= 5 and printed_spans(server))
    session_id = span["attributes"]["websocket.session.id"]
    of_session = [s for s in spans if s["attributes"].get("websocket.session.id") == session_id]
    # One span per received message plus the connection: none per send, none from Django.
    assert sorted(s["name"] for s in of_session) == ["EchoConsumer receive"] * 3 + ["ws.connection"]
    http = [s for s in spans if "websocket.session.id" not in s["attributes"]]
    assert len(http) == 1 and http[0]["attributes"]["http.method"] == "GET"


async def test_one_chat_message_is_one_trace_across_two_nodes(start_daphne, redis_url):
    env = {"OTEL_TRACES_EXPORTER": "console", "REDIS_URL": redis_url}
    node_a, node_b = start_daphne(env=env, name="trace-a"), start_daphne(env=env, name="trace-b")
    room = f"/ws/chat/trace-{node_a.port}/"

    def join(server):
        return connect(server.ws_url(room), origin=f"http://127.0.0.1:{server.port}",
                       open_timeout=5, close_timeout=5)

    async with join(node_a) as alice, join(node_b) as bob:
        await eventually(lambda: node_b.scrape().value(
            "ws_connections_active", consumer="ChatConsumer") == 1)
        await alice.send(json.dumps({"message": "traced", "traceparent": TRACEPARENT}))
        for ws in (alice, bob):
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["message"] == "traced"

    def spans_of_trace(server):
        return [s for s in printed_spans(server) if s["context"]["trace_id"] == "0x" + TRACE_ID]

    (received,) = await eventually(lambda: spans_of_trace(node_a) and [
        s for s in spans_of_trace(node_a) if s["name"] == "ChatConsumer receive"])
    assert received["parent_id"] == "0x00f067aa0ba902b7"  # the client's traceparent
    (on_b,) = await eventually(lambda: [s for s in spans_of_trace(node_b)
                                        if s["name"] == "ChatConsumer chat.message"])
    assert on_b["parent_id"] == received["context"]["span_id"]  # across Redis, on node B
    assert on_b["kind"] == "SpanKind.CONSUMER"
