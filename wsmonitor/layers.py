"""Instrumented channel layers: drop-in ``BACKEND`` values for ``CHANNEL_LAYERS``.

Every sender (consumers, views, Celery tasks, management commands) goes through
the layer, so sends, their outcome, fan-out and lost deliveries are measured
where they happen. Each message carries a small envelope under ``"_wsmonitor"``
(see :func:`envelope`); instrumented consumers read it to measure delivery time
and remove it before any handler runs.
"""

import collections
import functools
import time

from channels import layers as _channels_layers
from channels.exceptions import ChannelFull

from . import metrics as _metrics
from . import tracing
from .conf import get_config
from .logging import logger

ENVELOPE_KEY = "_wsmonitor"

__all__ = ["InMemoryChannelLayer", "RedisChannelLayer", "RedisPubSubChannelLayer", "envelope"]


def envelope(event, stamp=True):
    """Return a copy of ``event`` with wsmonitor's envelope (one msgpack-able dict).

    It holds the send time (``stamp``, for the delivery histogram) and the
    sender's W3C trace context when a span is current, so the receiving
    handler, on any node, continues the trace.
    """
    env = dict(event.get(ENVELOPE_KEY) or ())
    if stamp:
        env["sent_at"] = time.time()
    tracing.inject(env)
    if not env:
        return event
    stamped = dict(event)
    stamped[ENVELOPE_KEY] = env
    return stamped


def received(message, conn):
    """Observe delivery time; return the envelope and ``message`` without it.

    Never mutates ``message``: channels_redis hands the same dict to every
    member of a group in one process.
    """
    message = dict(message)
    env = message.pop(ENVELOPE_KEY)
    m = conn.metrics if conn is not None else None
    if m is not None and isinstance(env, dict):
        sent_at = env.get("sent_at")
        if isinstance(sent_at, (int, float)):
            # Another host's clock may run ahead of ours: clamp, see the README.
            _metrics.delivery(m.consumer, m.node).observe(max(0.0, time.time() - sent_at))
    return env, message


def _layer_metrics():
    """The node's layer metrics, or None when metrics are off."""
    config = get_config()
    return _metrics.layer(config["NODE"]) if config["METRICS"] else None


def _failed(m, kind, started, exc, target):
    m.sent(kind, "error", time.perf_counter() - started)
    if get_config()["LOGS"]:
        # Inside a consumer, structlog's context adds the session ID.
        logger.error("ws_layer_error", kind=kind, target=target,
                     error=f"{type(exc).__name__}: {exc}")


class _Instrumented:
    """``send`` timing, outcomes and the envelope, shared by the three backends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _layer_metrics()  # the node's series exist from the layer's creation

    async def send(self, channel, message):
        m = _layer_metrics()
        if m is None:
            return await super().send(channel, envelope(message, stamp=False))
        message = envelope(message)
        started = time.perf_counter()
        try:
            result = await super().send(channel, message)
        except ChannelFull:
            m.sent("send", "full", time.perf_counter() - started)
            m.dropped("send", "full")
            raise
        except Exception as exc:
            _failed(m, "send", started, exc, channel)
            raise
        m.sent("send", "ok", time.perf_counter() - started)
        return result

    async def group_send(self, group, message):
        m = _layer_metrics()
        if m is None:
            return await super().group_send(group, envelope(message, stamp=False))
        message = envelope(message)
        started = time.perf_counter()
        try:
            reached, skipped = await self._wsm_group_send(group, message)
        except Exception as exc:
            _failed(m, "group_send", started, exc, group)
            raise
        m.sent("group_send", "full" if skipped else "ok", time.perf_counter() - started)
        if reached is not None:
            m.group_size.observe(reached)
        m.dropped("group_send", "full", skipped)

    async def _wsm_group_send(self, group, message):
        """Send to the group; return (members reached or None if unknown, members skipped)."""
        raise NotImplementedError


class InMemoryChannelLayer(_Instrumented, _channels_layers.InMemoryChannelLayer):
    """channels' in-memory layer, instrumented (one process only)."""

    async def _wsm_group_send(self, group, message):
        # channels' own loop, counting what it silently skips.
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        reached = skipped = 0
        send = _channels_layers.InMemoryChannelLayer.send  # the plain send: no double count
        for channel in list(self.groups.get(group, ())):
            try:
                await send(self, channel, message)
            except ChannelFull:
                skipped += 1
            else:
                reached += 1
        return reached, skipped


# --- Redis (channels_redis) -------------------------------------------------------------
# Optional: importing this module must not require channels_redis.
try:
    from channels_redis import core as _redis_core
    from channels_redis import pubsub as _redis_pubsub
except ImportError:  # pragma: no cover - the redis extra is not installed
    _redis_core = _redis_pubsub = None

# channels_redis's script, returning the members skipped instead of the keys over capacity.
# ARGV: n messages, n capacities, n member counts, now, expiry cutoff, expiry.
GROUP_SEND_LUA = """
local n = #KEYS
local now = ARGV[3 * n + 1]
local cutoff = ARGV[3 * n + 2]
local expiry = ARGV[3 * n + 3]
local skipped = 0
for i = 1, n do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, cutoff)
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[n + i]) then
        redis.call('ZADD', KEYS[i], now, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        skipped = skipped + tonumber(ARGV[2 * n + i])
    end
end
return skipped
"""


if _redis_core is not None:

    class _CountingQueue(_redis_core.BoundedQueue):
        """channels_redis's per-channel receive buffer, counting the oldest message it drops."""

        def put_nowait(self, item):
            if self.full():
                m = _layer_metrics()
                if m is not None:
                    m.dropped("receive", "full")
            return super().put_nowait(item)

    class RedisChannelLayer(_Instrumented, _redis_core.RedisChannelLayer):
        """channels_redis's ``RedisChannelLayer``, instrumented, with an exact drop count."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.receive_buffer = collections.defaultdict(
                functools.partial(_CountingQueue, self.capacity)
            )

        async def _wsm_group_send(self, group, message):
            # channels_redis's group_send (one stored message per process key, listing that
            # process's members), with a script that returns how many members it skipped.
            assert self.require_valid_group_name(group), "Group name not valid"
            key = self._group_key(group)
            connection = self.connection(self.consistent_hash(group))
            await connection.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
            channel_names = [x.decode("utf8") for x in await connection.zrange(key, 0, -1)]
            by_connection, key_message, key_capacity = self._map_channel_keys_to_connection(
                channel_names, message)
            members = collections.Counter(
                self.prefix + self.non_local_name(name) for name in channel_names)
            skipped = 0
            for index, keys in by_connection.items():
                now = time.time()
                args = [key_message[k] for k in keys] + [key_capacity[k] for k in keys]
                args += [members[k] for k in keys]
                args += [now, int(now) - int(self.expiry), int(self.expiry)]
                skipped += await self.connection(index).eval(
                    GROUP_SEND_LUA, len(keys), *keys, *args)
            if skipped:
                _redis_core.logger.info("%s of %s channels over capacity in group %s",
                                        skipped, len(channel_names), group)
            return len(channel_names) - skipped, skipped

    class _PubSubShard(_redis_pubsub.RedisSingleShardConnection):
        async def publish(self, channel, message):
            """Publish; return how many subscribed connections (processes) received it."""
            async with self._lock:
                self._ensure_redis()
                return await self._redis.publish(channel, message)

    class _PubSubLoopLayer(_redis_pubsub.RedisPubSubLoopLayer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._shards = [_PubSubShard(shard.host, self) for shard in self._shards]

        async def send(self, channel, message):
            shard = self._get_shard(channel)
            return await shard.publish(channel, self.channel_layer.serialize(message))

        async def group_send(self, group, message):
            group_channel = self._get_group_channel_name(group)
            shard = self._get_shard(group_channel)
            return await shard.publish(group_channel, self.channel_layer.serialize(message))

    class RedisPubSubChannelLayer(_Instrumented, _redis_pubsub.RedisPubSubChannelLayer):
        """channels_redis's ``RedisPubSubChannelLayer``, instrumented.

        Pub/sub has no capacity: nothing is dropped for being full, but a message
        published while nobody subscribes is lost. A direct ``send`` that reached
        no subscriber counts as dropped (``reason="no_subscriber"``); a
        ``group_send`` only learns how many processes received it, not members.
        """

        async def send(self, channel, message):
            m = _layer_metrics()
            if m is None:
                return await self._get_layer().send(channel, message)
            message = envelope(message)
            started = time.perf_counter()
            try:
                receivers = await self._get_layer().send(channel, message)
            except Exception as exc:
                _failed(m, "send", started, exc, channel)
                raise
            m.sent("send", "ok", time.perf_counter() - started)
            if receivers == 0:
                m.dropped("send", "no_subscriber")

        async def group_send(self, group, message):
            m = _layer_metrics()
            if m is None:
                return await self._get_layer().group_send(group, message)
            return await super().group_send(group, message)

        async def _wsm_group_send(self, group, message):
            await self._get_layer().group_send(group, message)
            return None, 0

        def _get_layer(self):
            # channels_redis's, building our loop layer (publish answers its receiver count).
            loop = _redis_pubsub.asyncio.get_running_loop()
            try:
                return self._layers[loop]
            except KeyError:
                layer = self._layers[loop] = _PubSubLoopLayer(
                    *self._args, **self._kwargs, channel_layer=self)
                _redis_pubsub._wrap_close(self, loop)
                return layer
