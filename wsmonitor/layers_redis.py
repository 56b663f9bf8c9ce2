"""wsmonitor's channels_redis backends: the one place that relies on channels_redis internals.

Tested on channels_redis 4.3.0 (with channels 4.3.2, redis-py 8.1) and 4.2.1 (with
channels 4.2.2, redis-py 4.6: scripts/matrix.sh, scripts/upstream-layer-tests.sh); accepted
range: :data:`TESTED`. Outside it, or when an internal is not as expected, the
backends switch off loudly (an ERROR log line) and behave as the plain upstream
classes, timing sends only: no envelope, no loss counts beyond capacity errors.
"""

import asyncio
import collections
import logging
import time

import channels_redis
from channels_redis import core as _core
from channels_redis import pubsub as _pubsub
from channels_redis import serializers as _serializers

from . import envelope as _envelope
from . import layer_metrics as _lm
from .layers import _Instrumented, _Members, _sessions

#: channels_redis versions whose internals this module was checked against: [low, high). 4.2.1
#: and 4.3.0 differ only in channels' name checks, which this module calls through channels.
TESTED = ((4, 2, 1), (4, 4, 0))

log = logging.getLogger("wsmonitor.layers")


def _version(text):
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def _check():
    """Why the internals cannot be used, or None when they are as expected."""
    version = _version(getattr(channels_redis, "__version__", "0"))
    if not TESTED[0] <= version < TESTED[1]:
        return f"channels_redis {channels_redis.__version__} is outside the tested range"
    needed = {
        _core.RedisChannelLayer: ("_map_channel_keys_to_connection", "_group_key", "connection",
                                  "consistent_hash", "non_local_name", "get_capacity"),
        _core.BoundedQueue: ("put_nowait",),
        _serializers.BaseMessageSerializer: ("as_bytes", "serialize", "deserialize"),
        _pubsub.RedisPubSubLoopLayer: ("_get_shard", "_get_group_channel_name"),
        _pubsub.RedisSingleShardConnection: ("_ensure_redis",),
    }
    for cls, names in needed.items():
        missing = [name for name in names if not hasattr(cls, name)]
        if missing:
            return f"{cls.__qualname__} has no {', '.join(missing)}"
    if not hasattr(_pubsub, "_wrap_close"):
        return "channels_redis.pubsub has no _wrap_close"
    return None


PROBLEM = _check()
if PROBLEM:
    log.error("wsmonitor's channels_redis backends are switched off (%s): they behave as "
              "channels_redis's own classes, without envelope or loss counts", PROBLEM)

# One round trip for channels_redis's four-command send: drop expired entries (returned,
# to count them), check capacity, store. KEYS: channel key. ARGV: cutoff, capacity,
# message, score, expiry. Returns {stored (0: full), expired entries...}.
SEND_LUA = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], 0, ARGV[1])
if #expired > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1]) end
local stored = 0
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') < tonumber(ARGV[2]) then
    redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
    redis.call('EXPIRE', KEYS[1], ARGV[5])
    stored = 1
end
table.insert(expired, 1, stored)
return expired
"""

# The group's members in one round trip. KEYS: group key, lapsed-members hash.
# ARGV: member cutoff (group_expiry), now. Returns {lapsed live members, members...}.
GROUP_MEMBERS_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, ARGV[1])
local lapsed = 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 2, #entries, 2 do
    if tonumber(entries[i]) > tonumber(ARGV[2]) then lapsed = lapsed + 1 end
end
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
table.insert(members, 1, lapsed)
return members
"""

# channels_redis's delivery script, returning the members skipped for capacity, which keys
# were full and the expired entries it removed. ARGV: n messages, n capacities, n member
# counts, now, expiry cutoff, expiry. Returns {skipped, k, k full key indexes, expired...}.
GROUP_SEND_LUA = """
local n = #KEYS
local now = ARGV[3 * n + 1]
local cutoff = ARGV[3 * n + 2]
local expiry = ARGV[3 * n + 3]
local skipped = 0
local full = {}
local expired_all = {}
for i = 1, n do
    local expired = redis.call('ZRANGEBYSCORE', KEYS[i], 0, cutoff)
    if #expired > 0 then
        redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
        for _, entry in ipairs(expired) do table.insert(expired_all, entry) end
    end
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        skipped = skipped + tonumber(ARGV[2 * n + i])
        table.insert(full, i)
    end
end
local result = {skipped, #full}
for _, i in ipairs(full) do table.insert(result, i) end
for _, entry in ipairs(expired_all) do table.insert(result, entry) end
return result
"""

# A process's liveness: "alive" lapses ALIVE_TTL seconds after its last beat; "ran" outlives
# every entry the process can have left behind. KEYS: alive, ran. ARGV: their TTLs.
ALIVE_LUA = """
redis.call('SET', KEYS[1], 1, 'EX', ARGV[1])
redis.call('SET', KEYS[2], 1, 'EX', ARGV[2])
"""

#: Seconds a lapsed membership stays counted without its process renewing it.
LAPSE_TTL = 60


class _ReceiveBuffers(dict):
    """channels_redis's per-channel receive buffers, each knowing its channel."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def __missing__(self, channel):
        self[channel] = queue = _CountingQueue(self.layer.capacity)
        queue.channel, queue.layer = channel, self.layer
        return queue


class _CountingQueue(_core.BoundedQueue):
    """A receive buffer counting the oldest message it drops for a live reader."""

    channel = layer = None

    def put_nowait(self, item):
        if self.full() and self.channel not in self.layer._wsm_gone:
            _lm.lost("receive", "full", 1, self.channel, _sessions.get(self.channel))
        return super().put_nowait(item)


class RedisChannelLayer(_Members, _Instrumented, _core.RedisChannelLayer):
    """channels_redis's ``RedisChannelLayer``, instrumented, with exact loss counts."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        serializer = self._serializer
        plain = (isinstance(serializer, _serializers.BaseMessageSerializer)
                 and type(serializer).serialize is _serializers.BaseMessageSerializer.serialize
                 and type(serializer).deserialize is _serializers.BaseMessageSerializer.deserialize)
        # A serializer of the project's own may use its prefix differently: leave it alone.
        self._wsm_prefix = serializer.random_prefix_length if plain else 0
        if self._wsm_prefix < _envelope.TIME_PREFIX:
            self._wsm_prefix = 0
        self.receive_buffer = _ReceiveBuffers(self)
        self._wsm_timers = {}  # (group, channel) -> timer of its lapse
        self._wsm_beat = None  # (loop, timer) of this process's liveness beat
        self._wsm_liveness = {}  # client prefix of another process -> (dead, checked at)
        self._wsm_stale_seen = {}  # members of dead processes already counted stale (bounded)

    # --- Envelope in the serializer's prefix -------------------------------------
    def serialize(self, message):
        length = self._wsm_prefix
        if not length:
            return super().serialize(message)
        serializer = self._serializer
        body = serializer.as_bytes(message)
        if serializer.crypter:
            body = serializer.crypter.encrypt(body)
        return _envelope.prefix(length) + body

    def deserialize(self, message):
        result = super().deserialize(message)
        if self._wsm_prefix and type(result) is dict:
            env = _envelope.read_prefix(message, self._wsm_prefix)
            if env is not None:
                members = result.get("__asgi_channel__")
                _envelope.hold(result, env, len(members) if isinstance(members, list) else 1)
        return result

    def _wsm_local(self, channel):
        return "!" in channel and self.non_local_name(channel).endswith(self.client_prefix + "!")

    # --- Sends -------------------------------------------------------------------
    async def _wsm_send(self, channel, message):
        # channels_redis's send, in one script that also returns the expired entries.
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        assert "__asgi_channel__" not in message
        channel_non_local_name = channel
        if "!" in channel:
            message = dict(message.items())
            message["__asgi_channel__"] = channel
            channel_non_local_name = self.non_local_name(channel)
        channel_key = self.prefix + channel_non_local_name
        if "!" in channel:
            index = self.consistent_hash(channel)
        else:
            index = next(self._send_index_generator)
        connection = self.connection(index)
        result = await connection.eval(
            SEND_LUA, 1, channel_key, int(time.time()) - int(self.expiry),
            self.get_capacity(channel), self.serialize(message), time.time(), int(self.expiry))
        if len(result) > 1:
            await self._wsm_expired("send", result[1:])
        if not result[0]:
            raise _core.ChannelFull()

    def _wsm_members(self, entry):
        """The member channels a stored entry was for (["?"]: unreadable, one at least)."""
        serializer = self._serializer
        try:
            if self._wsm_prefix:  # channels_redis's serializer: decrypt without its TTL,
                data = entry[serializer.random_prefix_length:]  # which expired entries fail
                if serializer.crypter:
                    data = serializer.crypter.decrypt(data)
                message = serializer.from_bytes(data)
            else:
                message = serializer.deserialize(entry)
            members = message.get("__asgi_channel__") if type(message) is dict else None
        except Exception:  # another serializer or key: one delivery at least
            members = None
        if isinstance(members, str):
            return [members]
        return members or ["?"]

    async def _wsm_expired(self, kind, entries):
        """Count the deliveries in expired entries, one per member they listed, as lost,
        or as stale when the member's process is dead."""
        lost = collections.Counter()
        for entry in entries:
            for channel in self._wsm_members(entry):
                if channel not in self._wsm_gone:
                    lost[channel] += 1
        dead = await self._wsm_dead(lost)
        for channel, count in lost.items():
            if channel in dead:
                continue
            _lm.lost(kind, "expired", count, channel, _sessions.get(channel))
        self._wsm_stale(kind, dead)

    # --- Entries of dead processes: stale, not lost ------------------------------
    #: Seconds after a process's last liveness beat before other processes think it dead.
    ALIVE_TTL = 15
    #: Seconds another process's liveness is trusted before it is checked again.
    LIVENESS_CACHE = 5

    def _wsm_liveness_keys(self, client_prefix):
        return (f"{self.prefix}:wsm:alive:{client_prefix}".encode("utf8"),
                f"{self.prefix}:wsm:ran:{client_prefix}".encode("utf8"))

    async def new_channel(self, prefix="specific"):
        channel = await super().new_channel(prefix)
        loop = asyncio.get_running_loop()
        if self._wsm_beat is None or self._wsm_beat[0] is not loop:
            await self._wsm_alive()
        return channel

    async def _wsm_alive(self):
        """Mark this process alive, and again every third of ALIVE_TTL while its loop runs."""
        loop = asyncio.get_running_loop()
        self._wsm_stop_beat()
        self._wsm_beat = (loop, loop.call_later(
            self.ALIVE_TTL / 3, lambda: asyncio.ensure_future(self._wsm_alive())))
        ran = int(self.group_expiry + self.expiry + self.ALIVE_TTL)
        try:
            await self.connection(self.consistent_hash(self.client_prefix)).eval(
                ALIVE_LUA, 2, *self._wsm_liveness_keys(self.client_prefix), self.ALIVE_TTL, ran)
        except Exception as exc:  # the next beat tries again
            log.warning("could not mark this process alive in Redis: %s", exc)

    def _wsm_stop_beat(self):
        if self._wsm_beat is not None:
            self._wsm_beat[1].cancel()
            self._wsm_beat = None

    async def _wsm_dead(self, channels):
        """Those of ``channels`` whose process is dead: it ran wsmonitor and its beat lapsed.

        Processes never seen beating (the upstream classes, in a mixed deploy) are alive.
        """
        processes = {}
        for channel in channels:
            if "!" in channel:
                client_prefix = channel[:channel.index("!")].rsplit(".", 1)[-1]
                if client_prefix != self.client_prefix:
                    processes.setdefault(client_prefix, []).append(channel)
        if not processes:
            return ()
        now = time.monotonic()
        cache = self._wsm_liveness
        unknown = [p for p in processes if now - cache.get(p, (0, -1e9))[1] > self.LIVENESS_CACHE]
        if unknown:
            if len(cache) > 1000:
                cache.clear()
            by_shard = collections.defaultdict(list)
            for client_prefix in unknown:
                by_shard[self.consistent_hash(client_prefix)].append(client_prefix)
            for index, names in by_shard.items():
                keys = [key for name in names for key in self._wsm_liveness_keys(name)]
                try:
                    values = await self.connection(index).mget(keys)
                except Exception:  # unknown: alive, so a loss is never hidden
                    continue
                for i, name in enumerate(names):
                    cache[name] = (values[2 * i] is None and values[2 * i + 1] is not None, now)
        return {channel for client_prefix, members in processes.items()
                if cache.get(client_prefix, (False,))[0] for channel in members}

    def _wsm_stale(self, kind, channels):
        """Count each member of a dead process once (per sending process) as stale."""
        seen = self._wsm_stale_seen
        new = [channel for channel in channels if channel not in seen]
        if not new:
            return
        for channel in new:
            if len(seen) >= self.GONE_READERS_KEPT:
                del seen[next(iter(seen))]
            seen[channel] = True
        by_process = collections.Counter(self.non_local_name(channel) for channel in new)
        for process, count in by_process.items():
            _lm.lost(kind, "process_gone", count, process, None, event="ws_layer_stale")

    async def close_pools(self):
        # A clean end: this process's entries are stale from now on, not lost.
        self._wsm_stop_beat()
        try:
            await self.connection(self.consistent_hash(self.client_prefix)).delete(
                self._wsm_liveness_keys(self.client_prefix)[0])
        except Exception:  # the key lapses after ALIVE_TTL anyway
            pass
        await super().close_pools()

    async def _wsm_group_send(self, group, message):
        # channels_redis's group_send: one stored message per process key, listing that
        # process's members, with scripts that return what they drop.
        assert self.require_valid_group_name(group), "Group name not valid"
        key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        now = time.time()
        reply = await connection.eval(GROUP_MEMBERS_LUA, 2, key, self._wsm_lapsed_key(group),
                                      int(now) - self.group_expiry, now)
        lapsed, channel_names = reply[0], [x.decode("utf8") for x in reply[1:]]
        if lapsed:
            _lm.lost("group_send", "group_expiry", lapsed, group)
        by_connection, key_message, key_capacity = self._map_channel_keys_to_connection(
            channel_names, message)
        members = collections.Counter(
            self.prefix + self.non_local_name(name) for name in channel_names)
        skipped = lost = 0
        for index, keys in by_connection.items():
            now = time.time()
            args = [key_message[k] for k in keys] + [key_capacity[k] for k in keys]
            args += [members[k] for k in keys]
            args += [now, int(now) - int(self.expiry), int(self.expiry)]
            result = await self.connection(index).eval(GROUP_SEND_LUA, len(keys), *keys, *args)
            skipped += result[0]
            lost += result[0]
            full = result[2:2 + result[1]]
            if full:  # full keys of dead processes lose nothing
                full_keys = {keys[i - 1] for i in full}
                on_full = [name for name in channel_names
                           if self.prefix + self.non_local_name(name) in full_keys]
                dead = await self._wsm_dead(on_full)
                lost -= len(dead)
                self._wsm_stale("group_send", dead)
            if len(result) > 2 + result[1]:
                await self._wsm_expired("group_send", result[2 + result[1]:])
        if skipped:
            _core.logger.info("%s of %s channels over capacity in group %s",
                              skipped, len(channel_names), group)
        return len(channel_names) - skipped, lost

    # --- Group expiry, seen from the members' side -------------------------------
    def _wsm_lapsed_key(self, group):
        return f"{self.prefix}:wsm:lapsed:{group}".encode("utf8")

    def _wsm_rejoined(self, group, channel, joined=None):
        self._wsm_cancel(group, channel)
        loop = asyncio.get_running_loop()
        age = 0 if joined is None else max(0.0, time.time() - joined)
        # One second after group_expiry: by then channels_redis has dropped the member
        # (on the next group_send) or the whole group key has expired.
        self._wsm_timers[group, channel] = loop.call_later(
            max(0.0, self.group_expiry + 1 - age), self._wsm_lapse, group, channel)

    def _wsm_cancel(self, group, channel):
        timer = self._wsm_timers.pop((group, channel), None)
        if timer is not None:
            timer.cancel()
            return True
        return False

    def _wsm_lapse(self, group, channel):
        """The membership lapsed while the reader is alive: senders count what it misses."""
        loop = asyncio.get_running_loop()
        first = not isinstance(self._wsm_timers.get((group, channel)), _Renewal)
        self._wsm_timers[group, channel] = _Renewal(loop.call_later(
            LAPSE_TTL / 2, self._wsm_lapse, group, channel))
        connection = self.connection(self.consistent_hash(group))
        key = self._wsm_lapsed_key(group)
        session = _sessions.get(channel)

        async def mark():
            try:
                await connection.hset(key, channel, time.time() + LAPSE_TTL)
                await connection.expire(key, LAPSE_TTL)
            except Exception as exc:  # the next renewal tries again
                log.warning("could not mark the lapsed membership of %s in %s: %s",
                            channel, group, exc)
                return
            if first:  # counted once senders can see the mark
                _lm.lost("group_add", "group_expiry", 1, group, session,
                         event="ws_layer_membership_lapsed")

        asyncio.ensure_future(mark())

    async def _wsm_left(self, group, channel):
        lapsed = isinstance(self._wsm_timers.get((group, channel)), _Renewal)
        self._wsm_cancel(group, channel)
        if lapsed:
            connection = self.connection(self.consistent_hash(group))
            await connection.hdel(self._wsm_lapsed_key(group), channel)

    async def flush(self):
        self._wsm_stop_beat()
        for timer in self._wsm_timers.values():
            timer.cancel()
        self._wsm_timers.clear()
        self._wsm_forget()
        await super().flush()


class _Renewal:
    """The timer renewing a lapsed membership (a distinct type marks the lapse)."""

    __slots__ = ("timer",)

    def __init__(self, timer):
        self.timer = timer

    def cancel(self):
        self.timer.cancel()


class _PubSubShard(_pubsub.RedisSingleShardConnection):
    async def publish(self, channel, message):
        """Publish; return how many subscribed connections (processes) received it."""
        async with self._lock:
            self._ensure_redis()
            return await self._redis.publish(channel, message)


class _PubSubLoopLayer(_pubsub.RedisPubSubLoopLayer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._shards = [_PubSubShard(shard.host, self) for shard in self._shards]

    async def send(self, channel, message):
        shard = self._get_shard(channel)
        return await shard.publish(channel, self.channel_layer.serialize(message))


class RedisPubSubChannelLayer(_Instrumented, _pubsub.RedisPubSubChannelLayer):
    """channels_redis's ``RedisPubSubChannelLayer``, instrumented.

    Pub/sub has no capacity: nothing is dropped for being full, but a message
    published while nobody subscribes is lost. A direct ``send`` that reached
    no subscriber counts as dropped (``reason="no_subscriber"``); a
    ``group_send`` only learns how many processes received it, not members.
    Its payload has no bytes upstream readers skip, so no envelope travels.
    """

    async def _wsm_send(self, channel, message):
        receivers = await self._get_layer().send(channel, message)
        if receivers == 0:
            m = _lm.layer()
            if m is not None:
                m.dropped("send", "no_subscriber")

    async def _wsm_group_send(self, group, message):
        await self._get_layer().group_send(group, message)
        return None, 0

    def _get_layer(self):
        # channels_redis's, building our loop layer (publish answers its receiver count).
        loop = asyncio.get_running_loop()
        try:
            return self._layers[loop]
        except KeyError:
            layer = self._layers[loop] = _PubSubLoopLayer(
                *self._args, **self._kwargs, channel_layer=self)
            _pubsub._wrap_close(self, loop)
            return layer


if PROBLEM:  # switched off: the upstream classes, timed

    class RedisChannelLayer(_Instrumented, _core.RedisChannelLayer):  # noqa: F811
        """channels_redis's ``RedisChannelLayer`` (wsmonitor's internals switched off)."""

        async def _wsm_group_send(self, group, message):
            await _core.RedisChannelLayer.group_send(self, group, message)
            return None, 0

    class RedisPubSubChannelLayer(_Instrumented, _pubsub.RedisPubSubChannelLayer):  # noqa: F811
        """channels_redis's ``RedisPubSubChannelLayer`` (wsmonitor's internals switched off)."""

        async def _wsm_send(self, channel, message):
            return await self._get_layer().send(channel, message)

        async def _wsm_group_send(self, group, message):
            await self._get_layer().group_send(group, message)
            return None, 0
