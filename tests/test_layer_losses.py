"""Expiry losses counted exactly against what readers really received (real Redis, in memory)."""

import asyncio
import logging
import time
import types
import uuid

import pytest

from wsmonitor import layers
from wsmonitor.testing import MetricsSnapshot, assert_metric_diff

from .conftest import eventually

DROPPED = "ws_layer_messages_dropped_total"
LAPSED = "ws_layer_memberships_lapsed_total"
STALE = "ws_layer_stale_members_total"


def redis_layer(redis_url, prefix, **kwargs):
    return layers.RedisChannelLayer(
        hosts=[{"address": redis_url, "socket_timeout": None}], prefix=prefix, **kwargs)


async def receive_all(layer, channel, timeout=0.3):
    got = []
    while True:
        try:
            got.append(await asyncio.wait_for(layer.receive(channel), timeout))
        except asyncio.TimeoutError:
            return got


async def test_in_memory_message_expiry_and_the_group_deliveries_it_costs():
    layer = layers.InMemoryChannelLayer(expiry=1)
    slow, fast = await layer.new_channel(), await layer.new_channel()
    for channel in (slow, fast):
        await layer.group_add("room", channel)
    before = MetricsSnapshot.collect()
    for n in range(3):
        await layer.group_send("room", {"type": "m", "n": n})
    got_fast = [await layer.receive(fast) for _ in range(3)]
    await asyncio.sleep(1.1)  # the slow member's three messages expire
    for n in range(3, 5):  # the first of these cleans: slow is out of every group
        await layer.group_send("room", {"type": "m", "n": n})
    got_fast += [await layer.receive(fast) for _ in range(2)]
    got_slow = [m for m in await receive_all(layer, slow)]
    sent = 5 * 2
    assert len(got_fast) == 5 and got_slow == []
    # three expired in the slow member's queue, then it is out of every group: the two
    # sends after that miss it, one each
    assert_metric_diff(before, DROPPED, 5, kind="group_send", reason="expired")
    assert_metric_diff(before, DROPPED, 0, kind="group_send", reason="group_expiry")
    lost = (MetricsSnapshot.collect().value(DROPPED, reason="expired")
            - before.value(DROPPED, reason="expired"))
    assert lost == sent - len(got_fast) - len(got_slow) == 5


async def test_in_memory_group_expiry_counts_each_missed_delivery():
    # channels ends a membership once int(now) - group_expiry passes its join time: two seconds
    # after old joined, old has lapsed for certain, and young stays a member for a whole second
    # after it joined, however slowly a loaded machine gets to the sends.
    layer = layers.InMemoryChannelLayer(group_expiry=1)
    old = await layer.new_channel()
    await layer.group_add("room", old)
    await asyncio.sleep(2.05)
    young = await layer.new_channel()
    await layer.group_add("room", young)
    before = MetricsSnapshot.collect()
    for n in range(4):
        await layer.group_send("room", {"type": "m", "n": n})
    got = {c: len(await receive_all(layer, c, 0.1)) for c in (old, young)}
    assert got[young] == 4 and got[old] == 0
    assert_metric_diff(before, DROPPED, 4, kind="group_send", reason="group_expiry")
    assert_metric_diff(before, DROPPED, 4, reason="group_expiry")  # the lapse itself is no loss
    assert_metric_diff(before, LAPSED, 1)
    for channel in (old, young):  # they left (young lapses by now too): nothing more is lost
        await layer.group_discard("room", channel)
    await layer.group_send("room", {"type": "m"})
    assert_metric_diff(before, DROPPED, 4, kind="group_send", reason="group_expiry")


async def test_redis_expiry_is_counted_per_member_by_the_sender(redis_url):
    """Process A's members never read (a stalled process); B sends; entries expire on B's sends."""
    prefix = f"wsmtest{uuid.uuid4().hex[:8]}"
    node_a, node_b = (redis_layer(redis_url, prefix, expiry=2) for _ in range(2))
    members = [await node_a.new_channel() for _ in range(3)]
    try:
        for channel in members:
            await node_a.group_add("room", channel)
        before = MetricsSnapshot.collect()
        started = time.time()
        await node_b.group_send("room", {"type": "m", "n": 0})  # one entry listing 3 members
        await node_b.send(members[0], {"type": "direct"})
        await asyncio.sleep(1.5)
        # Keeps the key alive: Redis would otherwise delete it whole, uncounted, at expiry.
        await node_b.send(members[0], {"type": "direct"})
        await asyncio.sleep(max(0, started + 3.1 - time.time()))
        await node_b.send(members[0], {"type": "direct"})  # removes the two expired entries
        await node_b.group_send("room", {"type": "m", "n": 1})
        got = []
        for channel in members:
            got += await receive_all(node_a, channel)
        assert sorted(m.get("n", -1) for m in got) == [-1, -1, 1, 1, 1]
        sent = 3 + 1 + 1 + 1 + 3
        # Both entries sit on process A's one key: B's next send removes (and counts) them.
        assert_metric_diff(before, DROPPED, 4, kind="send", reason="expired")
        assert_metric_diff(before, DROPPED, 0, kind="group_send", reason="expired")
        assert sent - len(got) == 4
    finally:
        await node_a.flush()
        await node_b.flush()


async def test_redis_group_expiry_is_seen_from_the_members_side(redis_url):
    """The member's process marks its lapsed membership; every sender counts what it misses."""
    prefix = f"wsmtest{uuid.uuid4().hex[:8]}"
    member_node, sender = (redis_layer(redis_url, prefix, group_expiry=1) for _ in range(2))
    channel = await member_node.new_channel()
    reader = asyncio.ensure_future(receive_all(member_node, channel, 4.5))
    try:
        await member_node.group_add("room", channel)
        started = time.time()
        before = MetricsSnapshot.collect()
        await sender.group_send("room", {"type": "m", "n": 0})  # delivered
        await asyncio.sleep(max(0, started + 2.3 - time.time()))  # lapsed and marked
        for n in range(1, 4):
            await sender.group_send("room", {"type": "m", "n": n})
        got = await reader
        assert [m["n"] for m in got] == [0]
        assert_metric_diff(before, DROPPED, 3, kind="group_send", reason="group_expiry")
        assert_metric_diff(before, DROPPED, 3, reason="group_expiry")  # the lapse itself is no loss
        assert_metric_diff(before, LAPSED, 1)
        await member_node.group_discard("room", channel)
        await sender.group_send("room", {"type": "m"})
        assert_metric_diff(before, DROPPED, 3, kind="group_send", reason="group_expiry")
    finally:
        await member_node.flush()
        await sender.flush()


async def test_redis_rejoining_after_a_lapse_ends_the_count(redis_url):
    """group_add again (the fix for long-lived members) makes a lapsed member live again."""
    prefix = f"wsmtest{uuid.uuid4().hex[:8]}"
    member_node, sender = (redis_layer(redis_url, prefix, group_expiry=1) for _ in range(2))
    channel = await member_node.new_channel()
    reader = asyncio.ensure_future(receive_all(member_node, channel, 4.0))
    try:
        await member_node.group_add("room", channel)
        started = time.time()
        await asyncio.sleep(max(0, started + 2.3 - time.time()))  # lapsed and marked
        before = MetricsSnapshot.collect()
        await sender.group_send("room", {"type": "m", "n": 0})  # missed
        await member_node.group_add("room", channel)
        for n in range(1, 3):
            await sender.group_send("room", {"type": "m", "n": n})
        got = await reader
        assert [m["n"] for m in got] == [1, 2]
        assert_metric_diff(before, DROPPED, 1, reason="group_expiry")
    finally:
        await member_node.flush()
        await sender.flush()


async def test_redis_key_deleted_whole_by_expire_is_the_documented_gap(redis_url):
    """No send reaches a stalled process's key for `expiry` seconds: Redis deletes the key
    itself, where no wsmonitor code runs. Lost, and not counted (docs/channel-layers.md)."""
    prefix = f"wsmtest{uuid.uuid4().hex[:8]}"
    node_a, node_b = (redis_layer(redis_url, prefix, expiry=1) for _ in range(2))
    channel = await node_a.new_channel()
    try:
        before = MetricsSnapshot.collect()
        for n in range(3):
            await node_b.send(channel, {"type": "m", "n": n})
        connection = node_b.connection(node_b.consistent_hash(channel))
        key = node_b.prefix + node_b.non_local_name(channel)
        deadline = time.monotonic() + 5
        while await connection.exists(key):  # Redis expires the key after 1 s
            assert time.monotonic() < deadline, "the key did not expire"
            await asyncio.sleep(0.1)
        assert await receive_all(node_a, channel) == []
        assert_metric_diff(before, DROPPED, 0, reason="expired")  # 3 lost, 0 counted
    finally:
        await node_a.flush()
        await node_b.flush()


async def test_gone_readers_are_remembered_up_to_the_bound():
    layer = layers.InMemoryChannelLayer()
    layer.GONE_READERS_KEPT = 5
    channels = [await layer.new_channel() for _ in range(8)]
    layer.READER_GRACE = 0
    for channel in channels:
        reader = asyncio.ensure_future(layer.receive(channel))
        await asyncio.sleep(0)  # the reader waits on its queue
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await eventually(lambda: channel in layer._wsm_gone)
    assert list(layer._wsm_gone) == channels[-5:]  # the oldest forgotten first


async def test_a_reader_polling_with_timeouts_stays_live_and_a_gone_one_comes_back():
    layer = layers.InMemoryChannelLayer()
    layer.READER_GRACE = 0.3
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    before = MetricsSnapshot.collect()
    polled = time.monotonic()
    while time.monotonic() - polled < 1.0:  # a worker's loop: each receive times out
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(channel), 0.1)
    assert channel not in layer._wsm_gone and "room" in layer._wsm_joined[channel]
    assert_metric_diff(before, STALE, 0)
    # It stops polling: gone after the grace, its membership stale.
    await eventually(lambda: channel in layer._wsm_gone, timeout=3)
    assert_metric_diff(before, STALE, 1)
    await layer.group_send("room", {"type": "m"})
    assert (await asyncio.wait_for(layer.receive(channel), 1))["type"] == "m"  # back
    assert channel not in layer._wsm_gone and "room" in layer._wsm_joined[channel]


async def test_a_reader_ended_without_discard_is_stale_and_what_it_misses_no_loss(caplog):
    """channels cancels an ending consumer's receive (after its connection closed); without
    group_discard its memberships stay. They are stale (counted once each, the line naming
    its session), and group_sends to them lose nothing, even once its queue is full."""
    caplog.set_level(logging.WARNING)
    layer = layers.InMemoryChannelLayer(capacity=3)
    layer.READER_GRACE = 0.1
    gone, live = await layer.new_channel(), await layer.new_channel()
    conn = types.SimpleNamespace(channel_name=gone, session_id=f"s-{uuid.uuid4()}")
    layers._ForgetSessions().opened(conn)
    a, b = f"a{uuid.uuid4().hex}", f"b{uuid.uuid4().hex}"  # the line's target: unique
    for group in (a, b):
        await layer.group_add(group, gone)
    await layer.group_add(a, live)
    before = MetricsSnapshot.collect()
    reader = asyncio.ensure_future(layer.receive(gone))
    await asyncio.sleep(0)  # the reader waits on its queue
    layers._ForgetSessions().closed(conn)
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    await eventually(lambda: gone in layer._wsm_gone, timeout=3)
    [line] = [r.msg for r in caplog.records
              if isinstance(r.msg, dict) and r.msg.get("event") == "ws_layer_stale"]
    assert (line["target"], line["count"], line["session_id"]) == (f"{a},{b}", 2, conn.session_id)
    for n in range(6):  # past the gone reader's capacity
        await layer.group_send(a, {"type": "m", "n": n})
        assert (await layer.receive(live))["n"] == n
    assert_metric_diff(before, STALE, 2)
    assert_metric_diff(before, DROPPED, 0)


async def test_loss_lines_name_the_members_session_never_the_senders(caplog):
    """One ws_layer_loss line per target and burst, with its count and the member's session;
    a member whose session is unknown gets session_id null, not the sending consumer's."""
    import structlog

    caplog.set_level(logging.WARNING)
    layer = layers.InMemoryChannelLayer(expiry=1)
    known, unknown = await layer.new_channel(), await layer.new_channel()
    layers._sessions[known] = "member-session"
    for n in range(3):
        await layer.send(known, {"type": "m", "n": n})
    for n in range(2):
        await layer.send(unknown, {"type": "m", "n": n})
    await asyncio.sleep(1.1)
    structlog.contextvars.bind_contextvars(session_id="sender-session")
    try:
        await layer.group_send("room", {"type": "m"})  # cleans: both backlogs expired
        await layer.send(known, {"type": "m"})
        await asyncio.sleep(1.1)
        await layer.group_send("room", {"type": "m"})  # same target, same burst: carried
    finally:
        structlog.contextvars.unbind_contextvars("session_id")
        layers._sessions.pop(known, None)
    lines = [r.msg for r in caplog.records
             if isinstance(r.msg, dict) and r.msg.get("event") == "ws_layer_loss"]
    assert sorted((line["target"], line["count"], line["session_id"]) for line in lines) == sorted(
        [(known, 3, "member-session"), (unknown, 2, None)])
    assert all(line["reason"] == "expired" and line["kind"] == "group_send" for line in lines)


async def test_redis_entries_of_a_dead_process_are_stale_not_lost(redis_url):
    """A process joins its members to a group and dies without group_discard (its liveness
    beat stops). Another's group_sends fill the dead key and let entries expire: each member
    counts once as stale, nothing as dropped. A live process that does not read loses."""
    prefix = f"wsmtest{uuid.uuid4().hex[:8]}"
    dead, sender, idle = (redis_layer(redis_url, prefix, expiry=2, capacity=3)
                          for _ in range(3))
    dead.ALIVE_TTL = 1
    members = [await dead.new_channel() for _ in range(2)]
    idle_member = await idle.new_channel()
    try:
        for channel in members:
            await dead.group_add("room", channel)
        await idle.group_add("room", idle_member)
        dead._wsm_stop_beat()  # the process crashed: its beat stops, its entries stay
        alive_key = dead._wsm_liveness_keys(dead.client_prefix)[0]
        connection = sender.connection(0)
        deadline = time.monotonic() + 5
        while await connection.exists(alive_key):  # Redis lapses it after ALIVE_TTL
            assert time.monotonic() < deadline, "the liveness key did not lapse"
            await asyncio.sleep(0.1)
        before = MetricsSnapshot.collect()
        started = time.time()
        for n in range(2):
            await sender.group_send("room", {"type": "m", "n": n})
        await asyncio.sleep(1.5)
        await sender.group_send("room", {"type": "m", "n": 2})  # keys full, alive 2 s more
        await sender.group_send("room", {"type": "m", "n": 3})  # skipped on both keys
        await asyncio.sleep(max(0, started + 3.1 - time.time()))
        await sender.group_send("room", {"type": "m", "n": 4})  # removes n=0,1: expired
        # The dead process's two members: stale once each; the idle (live) one: lost.
        assert_metric_diff(before, STALE, 2)
        assert_metric_diff(before, DROPPED, 1, kind="group_send", reason="full")
        assert_metric_diff(before, DROPPED, 2, kind="group_send", reason="expired")
        got = await receive_all(idle, idle_member)
        assert [m["n"] for m in got] == [2, 4]
    finally:
        for layer in (dead, sender, idle):
            await layer.flush()


async def test_redis_expired_encrypted_entries_count_every_member(redis_url):
    """With symmetric_encryption_keys, an entry removed long after it was sent still names its
    members (channels_redis's own decrypt refuses entries older than expiry + 10 s)."""
    layer = redis_layer(redis_url, f"wsmtest{uuid.uuid4().hex[:8]}", expiry=1,
                        symmetric_encryption_keys=["secret"])
    members = [f"specific.{layer.client_prefix}!{n}" for n in range(2)]
    serializer = layer._serializer
    body = serializer.crypter.encrypt_at_time(
        serializer.as_bytes({"type": "m", "__asgi_channel__": members}), int(time.time()) - 600)
    entry = bytes(serializer.random_prefix_length) + body
    before = MetricsSnapshot.collect()
    await layer._wsm_expired("group_send", [entry])
    assert_metric_diff(before, DROPPED, 2, kind="group_send", reason="expired")
