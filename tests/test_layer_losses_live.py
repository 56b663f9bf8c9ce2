"""Expiry and group-expiry losses under real daphne processes, counted against what clients got.

Each test makes the loss happen on purpose (a short expiry or group_expiry, a handler that
stalls), counts the layer messages the WebSocket clients really received, and asserts that
ws_layer_messages_dropped_total, summed over the nodes, equals the deliveries that never came.
"""

import asyncio
import json
import time
import uuid

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .conftest import eventually

APP = "tests.layer_loss_app:application"
DROPPED = "ws_layer_messages_dropped_total"
LAPSED = "ws_layer_memberships_lapsed_total"


def unique(name):
    return f"{name}-{uuid.uuid4().hex[:6]}"


def start_nodes(start_daphne, count, redis_url=None, **layer):
    env = {"DJANGO_SETTINGS_MODULE": "tests.layer_loss_settings",
           **{f"LOSS_{key.upper()}": str(value) for key, value in layer.items()}}
    if redis_url:
        env.update(REDIS_URL=redis_url, LOSS_PREFIX=f"wsmloss{uuid.uuid4().hex[:8]}")
    return [start_daphne(app=APP, env=env, name=unique(f"loss{i}")) for i in range(count)]


class Peer:
    """A WebSocket client in a room, keeping every JSON reply it gets."""

    def __init__(self, ws):
        self.ws, self.replies = ws, []
        self.reader = asyncio.create_task(self._read())

    @classmethod
    async def join(cls, server, room):
        ws = await connect(server.ws_url(f"/ws/loss/{room}/"), open_timeout=5, close_timeout=5)
        peer = cls(ws)
        await peer.expect("joined")
        return peer

    async def _read(self):
        try:
            async for text in self.ws:
                self.replies.append(json.loads(text))
        except ConnectionClosed:
            pass

    def got(self, key):
        return [reply[key] for reply in self.replies if key in reply]

    async def expect(self, key, count=None, timeout=10):
        """Await the ``count``-th reply carrying ``key`` (the next one by default)."""
        count = count or len(self.got(key)) + 1
        await eventually(lambda: len(self.got(key)) >= count, timeout=timeout, message=key)

    async def command(self, reply, timeout=10, **command):
        count = len(self.got(reply)) + 1
        await self.ws.send(json.dumps(command))
        await self.expect(reply, count, timeout)

    async def close(self):
        await self.ws.close()
        await self.reader


def dropped(servers, **labels):
    return sum(server.scrape().value(DROPPED, **labels) for server in servers)


async def settle(servers, peers, sent, before):
    """Await received + counted losses == sent; nothing may change after that. Returns losses."""
    def received():
        return sum(len(peer.got("n")) for peer in peers)

    def balanced():
        lost = dropped(servers) - before
        return received() + lost == sent and lost

    lost = await eventually(balanced, timeout=15, message="received + dropped == sent")
    got = received()
    await asyncio.sleep(0.5)  # nothing may arrive, or be counted, after the books balanced
    assert received() == got and dropped(servers) - before == lost
    return lost


async def test_in_memory_stalled_handler_loses_its_backlog_and_its_groups(start_daphne):
    """expiry=1: the stalled member's queued messages expire, and it leaves every group."""
    [server] = start_nodes(start_daphne, 1, expiry=1)
    room = unique("room")
    slow, fast = await Peer.join(server, room), await Peer.join(server, room)
    before = dropped([server])
    await slow.command("stalling", stall=3)
    await fast.command("sent", broadcast=list(range(5)))
    await asyncio.sleep(1.3)  # the stalled member's backlog is older than expiry now
    await fast.command("sent", broadcast=list(range(5, 8)))
    await slow.expect("stalled", timeout=10)
    lost = await settle([server], [slow, fast], 8 * 2, before)
    assert fast.got("n") == list(range(8))
    # the message its pending receive had taken before the stall; the rest was lost
    assert slow.got("n") == [0] and lost == 7
    assert dropped([server], reason="expired") - before == lost
    for peer in (slow, fast):
        await peer.close()


async def test_redis_stalled_process_loses_what_expires_on_the_senders_node(
        start_daphne, redis_url):
    """expiry=2: nobody reads node A's key while its only consumer stalls; node B's sends
    remove (and count) the entries older than expiry; the rest arrives after the stall."""
    node_a, node_b = start_nodes(start_daphne, 2, redis_url, expiry=2)
    room = unique("room")
    slow, fast = await Peer.join(node_a, room), await Peer.join(node_b, room)
    before = dropped([node_a, node_b])
    await slow.command("stalling", stall=4.5)
    started = time.monotonic()
    for n in range(8):  # one every 0.5 s: each send also keeps node A's key from expiring whole
        await asyncio.sleep(max(0, started + 0.5 * n - time.monotonic()))
        await fast.command("sent", broadcast=[n])
    await slow.expect("stalled", timeout=10)
    lost = await settle([node_a, node_b], [slow, fast], 8 * 2, before)
    assert fast.got("n") == list(range(8))
    assert 0 < lost < 7 and len(slow.got("n")) == 8 - lost
    assert node_b.scrape().value(DROPPED, reason="expired") == lost  # counted by the sender
    assert node_a.scrape().value(DROPPED) == 0
    print(f"\nRedis expiry: 16 deliveries, {16 - lost} received, {lost} counted as expired")
    for peer in (slow, fast):
        await peer.close()


async def test_in_memory_group_expiry_counts_every_missed_group_send(start_daphne):
    """group_expiry=2: both join; later only one renews; the other misses every broadcast."""
    [server] = start_nodes(start_daphne, 1, group_expiry=2)
    room = unique("room")
    stale, renewed = await Peer.join(server, room), await Peer.join(server, room)
    await asyncio.sleep(3.2)  # a clock to wait for: group_expiry has passed for both
    before = dropped([server])
    lapsed = server.scrape().value(LAPSED)
    await renewed.command("joined", join=True)
    await renewed.command("sent", broadcast=list(range(4)))
    lost = await settle([server], [stale, renewed], 4 * 2, before)
    assert renewed.got("n") == list(range(4)) and stale.got("n") == []
    assert lost == 4 == dropped([server], reason="group_expiry") - before
    assert server.scrape().value(LAPSED) - lapsed == 1  # the member that did not renew
    for peer in (stale, renewed):
        await peer.close()


async def test_redis_group_expiry_is_counted_by_the_sender_from_the_members_mark(
        start_daphne, redis_url):
    """group_expiry=2: each member's node marks its lapsed membership; one member renews;
    the sender's node counts every broadcast the other misses."""
    node_a, node_b = start_nodes(start_daphne, 2, redis_url, group_expiry=2)
    room = unique("room")
    stale, renewed = await Peer.join(node_a, room), await Peer.join(node_b, room)
    for server in (node_a, node_b):  # each node marked its member's lapse
        await eventually(lambda server=server: server.scrape().value(LAPSED) == 1,
                         timeout=10, message="membership lapsed")
    lapsed_logs = node_a.events("ws_layer_membership_lapsed")
    assert [event["session_id"] for event in lapsed_logs] == stale.got("joined")
    before = dropped([node_a, node_b])
    await renewed.command("joined", join=True)
    await renewed.command("sent", broadcast=list(range(4)))
    lost = await settle([node_a, node_b], [stale, renewed], 4 * 2, before)
    assert renewed.got("n") == list(range(4)) and stale.got("n") == []
    assert lost == 4 == node_b.scrape().value(DROPPED, kind="group_send", reason="group_expiry")
    for peer in (stale, renewed):
        await peer.close()
