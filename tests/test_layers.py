"""wsmonitor.layers: sends, outcomes, fan-out, exact drop counts and delivery time."""

import asyncio
import logging
import uuid

import pytest
import redis.exceptions
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from wsmonitor import InstrumentedAsyncJsonWebsocketConsumer, layers
from wsmonitor.testing import MetricsSnapshot, assert_metric_diff

from .conftest import free_port

IN_MEMORY = {"default": {"BACKEND": "wsmonitor.layers.InMemoryChannelLayer"}}


async def drain(layer, channel):
    """Every message waiting on an in-memory ``channel`` (its queue goes when empty)."""
    got = []
    while channel in layer.channels:
        got.append(await layer.receive(channel))
    return got


async def test_send_outcomes_and_the_envelope():
    layer = layers.InMemoryChannelLayer(capacity=2)
    channel = await layer.new_channel()
    before = MetricsSnapshot.collect()
    await layer.send(channel, {"type": "a.b", "n": 1})
    await layer.send(channel, {"type": "a.b", "n": 2})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "a.b", "n": 3})
    assert_metric_diff(before, "ws_layer_sends_total", 2, kind="send", outcome="ok")
    assert_metric_diff(before, "ws_layer_sends_total", 1, kind="send", outcome="full")
    assert_metric_diff(before, "ws_layer_send_seconds_count", 3, kind="send")
    assert_metric_diff(before, "ws_layer_messages_dropped_total", 1, kind="send", reason="full")
    got = await drain(layer, channel)
    assert got == [{"type": "a.b", "n": 1}, {"type": "a.b", "n": 2}]  # exactly what was sent
    env, message = layers.received(got[0], None)
    assert message is got[0] and env["sent_at"] > 0
    assert layers.received(got[0], None) == (None, got[0])  # one reader, one envelope


async def test_in_memory_group_send_counts_every_skipped_member():
    layer = layers.InMemoryChannelLayer(capacity=3)
    channels = [await layer.new_channel() for _ in range(4)]
    for channel in channels:
        await layer.group_add("room", channel)
    await layer.send(channels[0], {"type": "filler"})
    await layer.send(channels[0], {"type": "filler"})
    before = MetricsSnapshot.collect()
    for n in range(3):
        await layer.group_send("room", {"type": "chat", "n": n})
    received = 0
    for channel in channels:
        received += sum(1 for m in await drain(layer, channel) if m["type"] == "chat")
    assert received == 10  # channel 0 had room for one of the three
    assert_metric_diff(before, "ws_layer_messages_dropped_total", 4 * 3 - received,
                       kind="group_send", reason="full")
    assert_metric_diff(before, "ws_layer_sends_total", 1, kind="group_send", outcome="ok")
    assert_metric_diff(before, "ws_layer_sends_total", 2, kind="group_send", outcome="full")
    assert_metric_diff(before, "ws_layer_sends_total", 0, kind="send")  # no double count
    assert_metric_diff(before, "ws_layer_group_size_count", 3)
    assert_metric_diff(before, "ws_layer_group_size_sum", received)


def redis_layer(redis_url, prefix, **kwargs):
    return layers.RedisChannelLayer(
        hosts=[{"address": redis_url, "socket_timeout": None}], prefix=prefix, **kwargs)


async def test_redis_group_send_counts_members_sharing_a_process_key(redis_url):
    """Two layer instances stand for two processes: one Redis key each, shared by its members."""
    prefix = f"wsmtest{uuid.uuid4().hex[:8]}"
    node_a, node_b = (redis_layer(redis_url, prefix, capacity=2) for _ in range(2))
    members_a = [await node_a.new_channel() for _ in range(3)]
    members_b = [await node_b.new_channel() for _ in range(2)]
    try:
        for channel in members_a + members_b:
            await node_a.group_add("room", channel)
        before = MetricsSnapshot.collect()
        for n in range(4):  # each key holds 2: the last two sends skip all 5 members
            await node_b.group_send("room", {"type": "chat", "n": n})
        dropped = MetricsSnapshot.collect().value(
            "ws_layer_messages_dropped_total", kind="group_send", reason="full") - before.value(
            "ws_layer_messages_dropped_total", kind="group_send", reason="full")
        received = 0
        for layer, members in ((node_a, members_a), (node_b, members_b)):
            for channel in members:
                received += len(await asyncio.wait_for(gather_n(layer, channel, 2), 5))
        assert (received, dropped) == (10, 10)
        assert_metric_diff(before, "ws_layer_group_size_sum", 10)
        assert_metric_diff(before, "ws_layer_sends_total", 2, kind="group_send", outcome="full")
    finally:
        await node_a.flush()
        await node_b.flush()


async def gather_n(layer, channel, count):
    return [await layer.receive(channel) for _ in range(count)]


async def test_redis_process_buffer_overflow_is_counted(redis_url):
    """channels_redis buffers group messages for each local member; a slow one loses the oldest."""
    prefix = f"wsmtest{uuid.uuid4().hex[:8]}"
    layer = redis_layer(redis_url, prefix, capacity=2)
    fast, slow = await layer.new_channel(), await layer.new_channel()
    try:
        for channel in (fast, slow):
            await layer.group_add("room", channel)
        before = MetricsSnapshot.collect()
        for n in range(4):
            await layer.group_send("room", {"type": "chat", "n": n})
            if n % 2:  # the fast member reads, filling the slow member's buffer of 2
                await asyncio.wait_for(gather_n(layer, fast, 2), 5)
        got = await asyncio.wait_for(gather_n(layer, slow, 2), 5)
        assert [m["n"] for m in got] == [2, 3]  # the two oldest were dropped
        assert_metric_diff(before, "ws_layer_messages_dropped_total", 2, kind="receive",
                           reason="full")
        assert_metric_diff(before, "ws_layer_messages_dropped_total", 0, kind="group_send")
    finally:
        await layer.flush()


async def test_pubsub_counts_sends_nobody_received(redis_url):
    layer = layers.RedisPubSubChannelLayer(hosts=[redis_url], prefix=f"wsm{uuid.uuid4().hex[:6]}")
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        before = MetricsSnapshot.collect()
        await layer.send("nobody.listens", {"type": "x"})
        await layer.send(channel, {"type": "direct"})
        await layer.group_send("room", {"type": "grouped"})
        got = [await asyncio.wait_for(layer.receive(channel), 5) for _ in range(2)]
        assert sorted(got, key=str) == [{"type": "direct"}, {"type": "grouped"}]
        assert_metric_diff(before, "ws_layer_messages_dropped_total", 1, kind="send",
                           reason="no_subscriber")
        assert_metric_diff(before, "ws_layer_sends_total", 2, kind="send", outcome="ok")
        assert_metric_diff(before, "ws_layer_sends_total", 1, kind="group_send", outcome="ok")
        assert_metric_diff(before, "ws_layer_group_size_count", 0)  # pub/sub cannot tell
    finally:
        await layer.flush()


class Room(InstrumentedAsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add("room", self.channel_name)
        await self.accept()

    async def receive_json(self, content, **kwargs):
        if content == "fail":
            await get_channel_layer("broken").send("elsewhere", {"type": "x"})
        elif content == "whoami":
            await self.send_json(self.session_id)

    async def room_event(self, event):
        await self.send_json(sorted(event))


@override_settings(CHANNEL_LAYERS=IN_MEMORY)
async def test_delivery_is_observed_and_the_envelope_removed():
    before = MetricsSnapshot.collect()
    known = set(layers._sessions)
    communicator = WebsocketCommunicator(Room.as_asgi(), "/ws/room/")
    assert (await communicator.connect(timeout=3))[0]
    # A sender outside any consumer, as a view or a Celery task would be.
    await get_channel_layer().group_send("room", {"type": "room.event", "text": "hi"})
    assert await communicator.receive_json_from(timeout=3) == ["text", "type"]
    await communicator.disconnect(timeout=3)
    assert_metric_diff(before, "ws_layer_delivery_seconds_count", 1, consumer="Room")
    assert_metric_diff(before, "ws_layer_group_size_sum", 1)
    assert_metric_diff(before, "ws_layer_sends_total", 1, kind="group_send", outcome="ok")
    assert set(layers._sessions) == known  # the closed connection's channel is forgotten


@override_settings(CHANNEL_LAYERS={**IN_MEMORY, "broken": {
    "BACKEND": "wsmonitor.layers.RedisChannelLayer",
    "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/0"]},  # nothing listens
}})
async def test_layer_error_is_counted_logged_with_the_session_and_frees_the_gauge(caplog):
    caplog.set_level(logging.INFO)
    before = MetricsSnapshot.collect()
    communicator = WebsocketCommunicator(Room.as_asgi(), "/ws/room/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_json_to("fail")
    with pytest.raises(redis.exceptions.ConnectionError):
        await communicator.wait(timeout=5)
    assert_metric_diff(before, "ws_layer_sends_total", 1, kind="send", outcome="error")
    assert_metric_diff(before, "ws_errors_total", 1, consumer="Room", stage="receive")
    assert_metric_diff(before, "ws_closes_total", 1, consumer="Room", code="1011")
    assert_metric_diff(before, "ws_connections_active", 0, consumer="Room")
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict)]
    error = next(e for e in logged if e["event"] == "ws_layer_error")
    opened = next(e for e in logged if e["event"] == "ws_open")
    assert error["session_id"] == opened["session_id"] and error["kind"] == "send"


@override_settings(CHANNEL_LAYERS=IN_MEMORY)
async def test_wsmonitor_close_event_closes_with_the_code():
    before = MetricsSnapshot.collect()
    communicator = WebsocketCommunicator(Room.as_asgi(), "/ws/room/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_json_to("whoami")
    session_id = await communicator.receive_json_from(timeout=3)
    layer = get_channel_layer()
    (channel,) = layer.groups["room"]
    await layer.send(channel, {"type": "wsmonitor.close", "code": 4001, "session_id": "other"})
    await layer.send(channel, {"type": "wsmonitor.close", "code": 1011, "session_id": session_id})
    assert await communicator.receive_nothing(timeout=0.2)  # wrong session; invalid code
    await layer.send(channel, {"type": "wsmonitor.close", "code": 4001, "session_id": session_id})
    assert await communicator.receive_output(timeout=3) == {"type": "websocket.close", "code": 4001}
    await communicator.disconnect(code=1006, timeout=3)
    assert_metric_diff(before, "ws_closes_total", 1, consumer="Room", code="4001")
