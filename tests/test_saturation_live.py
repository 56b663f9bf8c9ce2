"""A client that stops reading, against a real daphne: what an operator sees move in /metrics."""

import asyncio
import json

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .conftest import established, eventually

CHUNKS, SIZE = 2000, 4096  # about 8 MB of answer: more than the kernel's socket buffers hold
ENV = {"WSMONITOR_HEARTBEAT_INTERVAL": "0.3", "WSMONITOR_HEARTBEAT_TIMEOUT": "3"}


def stream_value(snapshot, name, **labels):
    return snapshot.value(name, consumer="StreamConsumer", **labels)


async def answer_pings_until(ws, predicate, timeout=10):
    """Read like a healthy client (answering pings); check ``predicate()`` whenever idle."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            message = json.loads(await asyncio.wait_for(ws.recv(), 0.1))
        except TimeoutError:
            if predicate():  # scrapes: only between bursts, not per message
                return
            assert loop.time() < deadline, "timed out reading"
            continue
        if message.get("type") == "wsmonitor.ping":
            await ws.send(json.dumps({"type": "wsmonitor.pong", "id": message["id"]}))


async def test_a_client_that_stops_reading_shows_in_backlog_and_rtt_and_a_zombie_is_closed(
        start_daphne):
    server = start_daphne(env=ENV, name="slow")
    origin = f"http://127.0.0.1:{server.port}"
    request = json.dumps({"prompt": "flood", "chunks": CHUNKS, "delay": 0, "size": SIZE})

    # 1. A slow reader: it answers heartbeats, then stops reading while the server streams.
    slow = await connect(server.ws_url("/ws/stream/"), origin=origin, max_queue=4,
                         open_timeout=5, close_timeout=5)
    await answer_pings_until(
        slow, lambda: stream_value(server.scrape(), "ws_heartbeat_rtt_seconds_count") >= 1)
    before = server.scrape()
    assert before.value("ws_send_backlog_bytes") == 0
    await slow.send(request)
    # daphne's send returned for every chunk; the bytes wait in Twisted's buffer, in /metrics:
    stalled = await eventually(lambda: (s := server.scrape()).value("ws_send_backlog_bytes")
                               > 1_000_000 and s, message="send backlog above 1 MB")
    assert stalled.value("ws_send_backlog_connections") == 1
    pings = stream_value(stalled, "ws_heartbeat_pings_total")
    # Pings keep going out behind the unsent data: wait for 6 more, so the first of them has
    # waited at least 5 x 0.3 s when the reader resumes.
    await eventually(lambda: stream_value(server.scrape(), "ws_heartbeat_pings_total") >= pings + 6)
    assert stream_value(server.scrape(), "ws_heartbeat_rtt_seconds_count") == \
        stream_value(before, "ws_heartbeat_rtt_seconds_count")  # no pong while stalled

    # The reader resumes: it drains the answer and answers the queued pings, late.
    def slow_rtts():
        snapshot = server.scrape()
        return (stream_value(snapshot, "ws_heartbeat_rtt_seconds_count")
                - stream_value(snapshot, "ws_heartbeat_rtt_seconds_bucket", le="1.0"))
    await answer_pings_until(slow, lambda: slow_rtts() >= 1)
    await eventually(lambda: server.scrape().value("ws_send_backlog_bytes") == 0,
                     message="backlog drained")
    await slow.close()
    after = await eventually(lambda: (s := server.scrape()) and stream_value(
        s, "ws_closes_total", code="1000") == 1 and s, message="slow reader's close counted")
    assert stream_value(after, "ws_heartbeat_timeouts_total") == 0
    # The demo's answer went through self.stream("answer"): one stream of 2000 chunks.
    assert stream_value(after, "ws_stream_chunks_sum", stream="answer") == CHUNKS
    assert stream_value(after, "ws_streams_total", stream="answer", outcome="ok") == 1

    # 2. A zombie: answers once, then never reads again. Closed with 4408 after 3 s.
    zombie = await connect(server.ws_url("/ws/stream/"), origin=origin, max_queue=4,
                           open_timeout=5, close_timeout=5)
    rtts = stream_value(after, "ws_heartbeat_rtt_seconds_count")
    await answer_pings_until(
        zombie, lambda: stream_value(server.scrape(), "ws_heartbeat_rtt_seconds_count") > rtts)
    await zombie.send(request)
    await eventually(lambda: stream_value(server.scrape(), "ws_closes_total", code="4408") == 1,
                     timeout=10, message="zombie closed with 4408")
    snapshot = server.scrape()
    assert stream_value(snapshot, "ws_heartbeat_timeouts_total") == 1
    assert stream_value(snapshot, "ws_connections_active") == 0
    assert snapshot.value("ws_send_backlog_bytes") == 0  # the dropped socket's buffer is gone
    # daphne dropped the TCP connection: the close frame could not get past the backlog.
    await eventually(lambda: established(server.port) == 0, message="zombie socket gone")
    try:
        while True:
            await asyncio.wait_for(zombie.recv(), 5)
    except ConnectionClosed:
        pass
    timeout_log = [json.loads(line) for line in server.log().splitlines()
                   if "ws_heartbeat_timeout" in line]
    assert len(timeout_log) == 1 and timeout_log[0]["session_id"]
    assert timeout_log[0]["send_backlog_bytes"] > 1_000_000
