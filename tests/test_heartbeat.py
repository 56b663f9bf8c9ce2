"""Application heartbeat: RTT, pong filtering, zombie timeouts (4408), task clean-up, reconnects."""

import asyncio
import logging

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from wsmonitor.checks import check_settings

from wsmonitor import InstrumentedAsyncJsonWebsocketConsumer, InstrumentedAsyncWebsocketConsumer
from wsmonitor import saturation
from wsmonitor.testing import MetricsSnapshot, assert_metric_diff, metric_diff

from .conftest import eventually

NODE = "test-node"


def sampler_task():
    """The running loop's saturation sampler task, or None."""
    sampler = saturation._samplers.get(asyncio.get_running_loop())
    return sampler.task if sampler else None
opened = []  # consumer instances, so tests can look at their heartbeat task


class JsonBeat(InstrumentedAsyncJsonWebsocketConsumer):
    wsmonitor_heartbeat = 0.05
    wsmonitor_heartbeat_timeout = 0.3
    seen = []

    async def connect(self):
        opened.append(self)
        await self.accept()

    async def receive_json(self, content, **kwargs):
        type(self).seen.append(content)
        if content == "boom":
            raise RuntimeError("receive failed")
        if content == "close":
            await self.close()
            return
        await self.send_json({"echo": content})


class Required(JsonBeat):
    wsmonitor_heartbeat_required = True


class PatientBeat(JsonBeat):
    """A client answering late must not be taken for a zombie on a loaded machine."""
    wsmonitor_heartbeat_timeout = 3.0


class TextBeat(InstrumentedAsyncWebsocketConsumer):
    wsmonitor_heartbeat = 0.05
    wsmonitor_heartbeat_frames = ("ping:", "pong:")
    seen = []

    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        type(self).seen.append(text_data)
        await self.send(text_data=text_data)


async def open_ws(consumer, path="/ws/beat/"):
    communicator = WebsocketCommunicator(consumer.as_asgi(), path)
    assert (await communicator.connect(timeout=3))[0]
    return communicator


async def next_ping(communicator):
    while True:
        content = await communicator.receive_json_from(timeout=3)
        if isinstance(content, dict) and content.get("type") == "wsmonitor.ping":
            return content


async def reply_answering_pings(communicator):
    """The next application message, answering every heartbeat ping on the way like a client."""
    while True:
        content = await communicator.receive_json_from(timeout=3)
        if isinstance(content, dict) and content.get("type") == "wsmonitor.ping":
            await communicator.send_json_to({"type": "wsmonitor.pong", "id": content["id"]})
        else:
            return content


async def test_rtt_is_the_real_round_trip_and_pongs_never_reach_the_application():
    PatientBeat.seen = []
    before = MetricsSnapshot.collect()
    labels = {"consumer": "PatientBeat", "node": NODE}
    communicator = await open_ws(PatientBeat)
    ping = await next_ping(communicator)
    assert set(ping) == {"type", "id"} and type(ping["id"]) is int
    await asyncio.sleep(0.15)  # the client is slow to answer: the RTT must show it
    await communicator.send_json_to({"type": "wsmonitor.pong", "id": ping["id"]})
    await eventually(lambda: metric_diff(before, "ws_heartbeat_rtt_seconds_count", **labels) == 1)
    rtt = metric_diff(before, "ws_heartbeat_rtt_seconds_sum", **labels)
    assert 0.15 <= rtt < 1.0
    assert_metric_diff(before, "ws_heartbeat_rtt_seconds_bucket", 0, le="0.1", **labels)
    assert_metric_diff(before, "ws_heartbeat_rtt_seconds_bucket", 1, le="0.25", **labels)

    # A user message that merely looks like a pong still reaches the application.
    await communicator.send_json_to({"type": "wsmonitor.pong-ish", "text": "hi"})
    reply = await reply_answering_pings(communicator)
    assert reply == {"echo": {"type": "wsmonitor.pong-ish", "text": "hi"}}
    await communicator.disconnect(code=1000, timeout=3)

    assert PatientBeat.seen == [{"type": "wsmonitor.pong-ish", "text": "hi"}]
    assert_metric_diff(before, "ws_messages_total", 1, direction="in", **labels)
    assert_metric_diff(before, "ws_messages_total", 1, direction="out", **labels)
    assert metric_diff(before, "ws_heartbeat_pings_total", **labels) >= 1
    assert_metric_diff(before, "ws_heartbeat_timeouts_total", 0, **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="1000", **labels)


async def test_text_consumers_use_configurable_frames():
    TextBeat.seen = []
    before = MetricsSnapshot.collect()
    communicator = await open_ws(TextBeat)
    ping = await communicator.receive_from(timeout=3)
    assert ping.startswith("ping:")
    await communicator.send_to(text_data="pong:" + ping[len("ping:"):])
    await communicator.send_to(text_data="pong: is also a word")
    while (reply := await communicator.receive_from(timeout=3)).startswith("ping:"):
        pass
    assert reply == "pong: is also a word"
    await communicator.disconnect(timeout=3)
    assert TextBeat.seen == ["pong: is also a word"]
    assert_metric_diff(before, "ws_heartbeat_rtt_seconds_count", 1, consumer="TextBeat")
    assert_metric_diff(before, "ws_messages_total", 1, direction="in", consumer="TextBeat")


async def test_a_client_that_stops_answering_is_closed_with_4408_and_logged(caplog):
    caplog.set_level(logging.INFO)
    before = MetricsSnapshot.collect()
    labels = {"consumer": "JsonBeat", "node": NODE}
    communicator = await open_ws(JsonBeat)
    ping = await next_ping(communicator)
    await communicator.send_json_to({"type": "wsmonitor.pong", "id": ping["id"]})
    # Then silence: the next pings go unanswered for longer than the 0.3 s timeout.
    while True:
        output = await communicator.receive_output(timeout=3)
        if output["type"] == "websocket.close":
            break
    assert output["code"] == 4408
    await communicator.disconnect(code=1006, timeout=3)  # the zombie's TCP finally drops

    assert_metric_diff(before, "ws_heartbeat_timeouts_total", 1, **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="4408", **labels)  # declared by wsmonitor
    assert_metric_diff(before, "ws_closes_total", 1, **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    timeout = next(e for e in logged if e["event"] == "ws_heartbeat_timeout")
    close = next(e for e in logged if e["event"] == "ws_close")
    assert timeout["session_id"] == close["session_id"] is not None
    assert timeout["code"] == close["code"] == 4408
    assert timeout["unanswered_for"] >= 0.3 and timeout["pongs"] == 1
    assert timeout["pings_unanswered"] >= 2


async def test_clients_that_never_speak_the_heartbeat_are_left_alone_unless_required():
    before = MetricsSnapshot.collect()
    tolerant = await open_ws(JsonBeat)
    required = await open_ws(Required)
    # Required never answered: closed once its first ping is 0.3 s old.
    while (output := await required.receive_output(timeout=3))["type"] != "websocket.close":
        pass
    assert output["code"] == 4408
    # Meanwhile the tolerant consumer kept pinging a client that never answered, and stays open.
    pings = 0
    while pings < 10:  # 10 x 0.05 s: well past the 0.3 s timeout
        assert (await tolerant.receive_output(timeout=3))["type"] == "websocket.send"
        pings += 1
    await tolerant.send_json_to("still here")
    while (await tolerant.receive_json_from(timeout=3)) != {"echo": "still here"}:
        pass
    await tolerant.disconnect(timeout=3)
    await required.disconnect(timeout=3)
    assert_metric_diff(before, "ws_heartbeat_timeouts_total", 0, consumer="JsonBeat")
    assert_metric_diff(before, "ws_heartbeat_timeouts_total", 1, consumer="Required")


@pytest.mark.parametrize("path", ["client-close", "server-close", "exception", "cancelled"])
async def test_the_heartbeat_task_ends_on_every_path_out(path):
    opened.clear()
    communicator = await open_ws(JsonBeat)
    consumer = opened[0]
    task = consumer._wsm.state["heartbeat"].task
    sampler = sampler_task()
    assert not task.done() and sampler is not None and not sampler.done()
    if path == "client-close":
        await communicator.disconnect(code=1001, timeout=3)
    elif path == "server-close":
        await communicator.send_json_to("close")
        while (await communicator.receive_output(timeout=3))["type"] != "websocket.close":
            pass
        await communicator.disconnect(timeout=3)
    elif path == "exception":
        await communicator.send_json_to("boom")
        with pytest.raises(RuntimeError):
            await communicator.wait(timeout=3)
    else:
        communicator.future.cancel()  # daphne's shutdown
        with pytest.raises(asyncio.CancelledError):
            await communicator.future
    await eventually(lambda: task.done() and sampler.done(), timeout=3,
                     message="heartbeat and sampler tasks finished")
    assert task.cancelled() and sampler_task() is None


async def test_reported_reconnects_are_counted_in_bounded_buckets():
    before = MetricsSnapshot.collect()
    for query in ("reconnect=1", "reconnect=4", "reconnect=250&traceparent=x", "",
                  "reconnect=abc", "reconnect=-2", "reconnect=" + "9" * 40):
        communicator = await open_ws(JsonBeat, "/ws/beat/?" + query)
        await communicator.disconnect(timeout=3)
    after = MetricsSnapshot.collect()
    counted = {value: metric_diff(before, "ws_client_reconnects_total", after,
                                  consumer="JsonBeat", attempts=value)
               for value in after.label_values("ws_client_reconnects_total", "attempts")}
    assert {k: v for k, v in counted.items() if v} == {"1": 1, "3-5": 1, "11+": 1}


async def test_event_loop_lag_shows_a_handler_that_blocks_the_loop(monkeypatch):
    import time

    class Blocking(InstrumentedAsyncWebsocketConsumer):
        async def connect(self):
            await self.accept()

        async def receive(self, text_data=None, bytes_data=None):
            time.sleep(0.4)  # sync I/O in an async handler: every connection waits
            await self.send(text_data="done")

    monkeypatch.setattr(saturation, "SAMPLE_INTERVAL", 0.05)

    def above_quarter_second(snapshot):
        return (snapshot.value("ws_event_loop_lag_seconds_count", node=NODE)
                - snapshot.value("ws_event_loop_lag_seconds_bucket", node=NODE, le="0.25"))

    communicator = await open_ws(Blocking)
    # Let the sampler take a few normal samples first.
    start = MetricsSnapshot.collect().value("ws_event_loop_lag_seconds_count", node=NODE)
    await eventually(lambda: MetricsSnapshot.collect().value(
        "ws_event_loop_lag_seconds_count", node=NODE) >= start + 3)
    before = MetricsSnapshot.collect()
    await communicator.send_to(text_data="work")
    assert await communicator.receive_from(timeout=3) == "done"
    await eventually(lambda: above_quarter_second(MetricsSnapshot.collect())
                     > above_quarter_second(before), timeout=3, message="lag > 0.25 s observed")
    await communicator.disconnect(timeout=3)
    assert above_quarter_second(MetricsSnapshot.collect()) == above_quarter_second(before) + 1


@pytest.mark.parametrize("value, expected", [
    ({"HEARTBEAT_INTERVAL": 5, "HEARTBEAT_TIMEOUT": 7.5}, []),
    ({"HEARTBEAT_INTERVAL": 0}, ["wsmonitor.E016"]),
    ({"HEARTBEAT_INTERVAL": "20"}, ["wsmonitor.E016"]),
    ({"HEARTBEAT_INTERVAL": True}, ["wsmonitor.E016"]),
    ({"HEARTBEAT_TIMEOUT": -1}, ["wsmonitor.E017"]),
    ({"HEARTBEAT_TIMEOUT": float("inf")}, ["wsmonitor.E017"]),
])
def test_heartbeat_settings_are_checked(value, expected):
    with override_settings(WSMONITOR=value):
        errors = check_settings(None)
    assert [error.id for error in errors] == expected
    for error in errors:
        assert "HEARTBEAT_" in error.msg


@pytest.mark.parametrize("attrs, message", [
    ({"wsmonitor_heartbeat": 0}, "wsmonitor_heartbeat must be a positive number"),
    ({"wsmonitor_heartbeat": "20"}, "wsmonitor_heartbeat must be a positive number"),
    ({"wsmonitor_heartbeat_timeout": -1}, "wsmonitor_heartbeat_timeout must be a positive"),
    ({"wsmonitor_heartbeat_required": "yes"}, "wsmonitor_heartbeat_required must be True or"),
    ({"wsmonitor_heartbeat_frames": ("ping:",)}, "wsmonitor_heartbeat_frames must be two"),
])
def test_a_bad_heartbeat_attribute_is_refused_when_the_class_is_defined(attrs, message):
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=message) as refused:
        type("Broken", (JsonBeat,), attrs)
    assert "Broken" in str(refused.value)  # names the class to fix


class SlowGroupMember(InstrumentedAsyncWebsocketConsumer):
    gate = None

    async def connect(self):
        opened.append(self)
        await self.accept()

    async def work(self, event):
        await type(self).gate.wait()  # a handler slower than its traffic


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_channel_layer_backlog_shows_messages_waiting_for_a_slow_consumer(
        backend, request, monkeypatch):
    import uuid

    from channels.layers import get_channel_layer

    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {
            "hosts": [{"address": url, "socket_timeout": None}],
            "prefix": f"wsmtest-{uuid.uuid4().hex[:8]}"}}}
    else:
        layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    monkeypatch.setattr(saturation, "SAMPLE_INTERVAL", 0.05)
    SlowGroupMember.gate = asyncio.Event()

    def waiting():
        return MetricsSnapshot.collect().value(
            "ws_channel_layer_backlog_messages", node=NODE, alias="default")

    with override_settings(CHANNEL_LAYERS=layers):
        layer = get_channel_layer()
        opened.clear()
        communicator = await open_ws(SlowGroupMember)
        channel = opened[0].channel_name
        for _ in range(30):
            await layer.send(channel, {"type": "work"})
        # One message is being handled; the other 29 wait for this process.
        await eventually(lambda: waiting() == 29, timeout=5, message="29 messages waiting")
        SlowGroupMember.gate.set()
        await eventually(lambda: waiting() == 0, timeout=5, message="backlog drained")
        await communicator.disconnect(timeout=3)
        if backend == "redis":
            await layer.close_pools()


async def test_pong_bookkeeping_lost_late_duplicate_and_forged_pongs():
    from wsmonitor.heartbeat import MAX_PENDING, Heartbeat

    from wsmonitor.connection import Connection

    sent = []

    async def send(message):
        sent.append(message["text"])

    conn = Connection({"type": "websocket"}, "Unit", {"SPLIT_CONNECTION_SPAN": False}, send,
                      False, False, None)
    conn.finished = True  # never accepted: a bookkeeping-only connection
    beat = Heartbeat(conn, 1, 10, False, None, None)
    for now in (1.0, 2.0, 3.0):
        await beat._ping(now)
    assert sent[0] == '{"type":"wsmonitor.ping","id":1}'
    assert not beat.enforcing and beat.unanswered_since == 1.0
    beat.pong(2)  # ping 1 was lost: answering 2 settles both
    assert beat.enforcing and beat.last_answered == 2 and beat.unanswered_since == 3.0
    beat.pong(1)  # late / duplicate: ignored
    beat.pong(99)  # never sent: ignored
    beat.pong("3")  # not an int: ignored
    assert beat.answered == 1 and beat.unanswered_since == 3.0
    assert beat.absorb({"type": "websocket.receive", "text": '{"type":"wsmonitor.pong","id":3}'})
    assert beat.answered == 2 and beat.unanswered_since is None and not beat.pending
    for now in range(MAX_PENDING + 5):
        await beat._ping(100.0 + now)
    assert len(beat.pending) == MAX_PENDING and beat.unanswered_since == 100.0
    beat.pong(4)  # too old to remember its send time, but proof of life
    assert beat.answered == 3 and beat.unanswered_since == beat.pending[0][1]


async def test_a_layer_whose_backlog_cannot_be_read_is_logged_once_and_not_exported(
        caplog, monkeypatch):
    from channels.layers import channel_layers

    class Misshapen:  # a layer whose internals are not what the sampler knows
        channels = {"specific.x": object()}

    monkeypatch.setitem(channel_layers.backends, "misshapen", Misshapen())
    saturation.LAYER_BACKLOG.labels(NODE, "misshapen").set(7)  # a value from before it broke
    with caplog.at_level(logging.WARNING, logger="wsmonitor"):
        for _ in range(2):
            assert "misshapen" not in await saturation.layer_backlog()
    warned = [r for r in caplog.records if "ws_layer_backlog_error" in r.getMessage()]
    assert len(warned) == 1 and "misshapen" in warned[0].getMessage()
    assert "misshapen" not in MetricsSnapshot.collect().label_values(
        "ws_channel_layer_backlog_messages", "alias")  # absent, not its last value
