"""Instrumented channel layers: drop-in ``BACKEND`` values for ``CHANNEL_LAYERS``.

Every sender (consumers, views, Celery tasks, management commands) goes through
the layer, so sends, their outcome, fan-out and lost deliveries are measured
where they happen. Readers get exactly the message that was sent; the send time
and trace context travel beside it (:mod:`wsmonitor.envelope`) and wsmonitor's
consumers read them with :func:`received`. See docs/channel-layers.md.
"""

import asyncio
import time
import weakref

from channels import layers as _channels_layers
from channels.exceptions import ChannelFull

from . import compat
from . import envelope as _envelope
from . import features as _features
from . import layer_metrics as _lm
from .logging import logger

#: Key of the envelope that earlier wsmonitor versions put into messages (still read).
ENVELOPE_KEY = "_wsmonitor"

__all__ = ["InMemoryChannelLayer", "RedisChannelLayer", "RedisPubSubChannelLayer", "received"]

_sessions = {}  # channel name -> session ID of the wsmonitor consumer reading it
# Sessions of closed connections whose channel still had memberships in one of wsmonitor's
# layers, kept (bounded) for the stale line their reader's end logs after the close.
_closed_sessions = {}
CLOSED_SESSIONS_KEPT = 10_000
_member_layers = weakref.WeakSet()  # the layers keeping membership books (_Members)


class _ForgetSessions(_features.Feature):
    """An open connection's channel is in ``_sessions``; a closed one's leaves it (its
    reader's end may not be seen)."""

    name = "layer_sessions"
    kinds = frozenset({"async", "sync"})  # only wsmonitor's consumers set conn.channel_name

    def opened(self, conn):
        # Loss and lapse lines name the member's session, also before it received anything.
        if conn.channel_name is not None:
            _sessions[conn.channel_name] = conn.session_id

    def closed(self, conn):
        if conn.channel_name is not None:
            session = _sessions.pop(conn.channel_name, None)
            if session is not None and any(
                    conn.channel_name in layer._wsm_joined for layer in _member_layers):
                if len(_closed_sessions) >= CLOSED_SESSIONS_KEPT:
                    _closed_sessions.pop(next(iter(_closed_sessions)), None)
                _closed_sessions[conn.channel_name] = session


_features.register(_ForgetSessions())


def received(message, conn):
    """Return ``(envelope or None, message)`` for a layer message a consumer dispatches.

    ``message`` is returned as it is: plain readers and wsmonitor's consumers see
    the same object. Observes the delivery time when the connection has metrics.
    """
    env = _envelope.take(message) if _envelope._held else None
    if env is None:
        if type(message) is not dict or ENVELOPE_KEY not in message:
            return None, message
        # Sent by an earlier wsmonitor, which put the envelope into the message.
        message = dict(message)
        env = message.pop(ENVELOPE_KEY)
        if not isinstance(env, dict):
            return None, message
    if conn is not None:
        m = conn.metrics
        sent_at = env.get("sent_at")
        if m is not None and isinstance(sent_at, (int, float)):
            # Another host's clock may run ahead of ours: clamp, see the README.
            _lm.delivery(m.consumer, m.node).observe(max(0.0, time.time() - sent_at))
        channel = getattr(conn, "channel_name", None) or getattr(
            getattr(conn, "owner", None), "channel_name", None)
        if channel is not None and channel not in _sessions:
            _sessions[channel] = conn.session_id
    return env, message


def _failed(m, kind, started, exc, target):
    m.sent(kind, "error", time.perf_counter() - started)
    if _lm.config()["LOGS"]:
        # Inside a consumer, structlog's context adds the session ID.
        logger.error("ws_layer_error", kind=kind, target=target,
                     error=f"{type(exc).__name__}: {exc}")


class _Instrumented:
    """``send``/``group_send`` timing and outcomes, shared by the three backends."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _lm.layer()  # the node's series exist from the layer's creation

    async def send(self, channel, message):
        m = _lm.layer()
        if m is None:
            return await self._wsm_send(channel, message)
        started = time.perf_counter()
        try:
            result = await self._wsm_send(channel, message)
        except ChannelFull:
            m.sent("send", "full", time.perf_counter() - started)
            m.dropped("send", "full")
            raise
        except Exception as exc:
            _failed(m, "send", started, exc, channel)
            raise
        m.sent("send", "ok", time.perf_counter() - started)
        return result

    async def _wsm_send(self, channel, message):
        return await super().send(channel, message)

    async def group_send(self, group, message):
        m = _lm.layer()
        started = time.perf_counter()
        try:
            reached, skipped = await self._wsm_group_send(group, message)
        except Exception as exc:
            if m is not None:
                _failed(m, "group_send", started, exc, group)
            raise
        if m is not None:
            m.sent("group_send", "full" if skipped else "ok", time.perf_counter() - started)
            if reached is not None:
                m.group_size.observe(reached)
            m.dropped("group_send", "full", skipped)

    async def _wsm_group_send(self, group, message):
        """Send to the group; return (members reached or None if unknown, deliveries lost
        for capacity: members skipped whose reader is alive)."""
        raise NotImplementedError


class _Members:
    """This process's side of group membership: who joined what, when, and who left.

    A reader is gone when its ``receive`` ended by cancellation or error and no
    new ``receive`` on the channel started within ``READER_GRACE`` seconds
    (channels cancels a consumer's receive when the consumer ends; a worker
    polling with ``asyncio.wait_for(layer.receive(...), t)`` starts the next one
    at once). Memberships a gone reader did not discard are stale, counted in
    ``ws_layer_stale_members_total``, never as losses. A gone reader that
    receives again is live again, with the memberships it had.
    """

    #: How many gone readers are remembered, so that messages expiring in their queues count as
    #: theirs (never as losses). About 100 bytes each: at most ~1 MB, whatever the churn.
    GONE_READERS_KEPT = 10_000
    #: Seconds after a cancelled or failed receive before its reader counts as gone.
    READER_GRACE = 2.0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wsm_joined = {}  # channel -> {group: joined at}
        self._wsm_gone = {}  # channel whose reader left -> its memberships, oldest first (bounded)
        self._wsm_ending = {}  # channel whose receive ended -> timer declaring its reader gone
        _member_layers.add(self)

    def _wsm_local(self, channel):
        return True

    async def group_add(self, group, channel):
        await super().group_add(group, channel)
        if self._wsm_local(channel):
            self._wsm_joined.setdefault(channel, {})[group] = time.time()
            self._wsm_gone.pop(channel, None)
            await self._wsm_left(group, channel)  # a lapsed membership is live again
            self._wsm_rejoined(group, channel)

    async def group_discard(self, group, channel):
        await super().group_discard(group, channel)
        groups = self._wsm_joined.get(channel)
        if groups is not None:
            groups.pop(group, None)
            if not groups:
                del self._wsm_joined[channel]
        await self._wsm_left(group, channel)

    async def receive(self, channel):
        if channel in self._wsm_ending:  # the receive before this one was cancelled: polling
            self._wsm_ending.pop(channel).cancel()
        elif channel in self._wsm_gone:
            self._wsm_revive(channel)
        try:
            return await super().receive(channel)
        except BaseException:
            self._wsm_ending[channel] = asyncio.get_running_loop().call_later(
                self.READER_GRACE, self._wsm_end, channel)
            raise

    def _wsm_end(self, channel):
        self._wsm_ending.pop(channel, None)
        asyncio.ensure_future(self._wsm_reader_gone(channel))

    async def _wsm_reader_gone(self, channel):
        groups = self._wsm_joined.pop(channel, None)
        if len(self._wsm_gone) >= self.GONE_READERS_KEPT:
            del self._wsm_gone[next(iter(self._wsm_gone))]
        self._wsm_gone[channel] = groups or {}
        session = _sessions.pop(channel, None) or _closed_sessions.pop(channel, None)
        if groups:
            _lm.lost("group_add", "stale", len(groups), ",".join(sorted(groups)), session,
                     event="ws_layer_stale")
            for group in groups:
                await self._wsm_left(group, channel)

    def _wsm_forget(self):
        for timer in self._wsm_ending.values():
            timer.cancel()
        self._wsm_ending.clear()
        self._wsm_joined.clear()

    def _wsm_revive(self, channel):
        """A gone reader receives again: its memberships are live again."""
        groups = self._wsm_gone.pop(channel)
        if groups:
            self._wsm_joined[channel] = groups
            for group, joined in groups.items():
                self._wsm_rejoined(group, channel, joined)

    def _wsm_rejoined(self, group, channel, joined=None):
        """``channel`` joined ``group`` (again, or at ``joined`` for a revived reader)."""

    async def _wsm_left(self, group, channel):
        """``channel`` left ``group`` (discarded, or its reader is gone)."""


class InMemoryChannelLayer(_Members, _Instrumented, _channels_layers.InMemoryChannelLayer):
    """channels' in-memory layer, instrumented (one process only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wsm_lapsed = {}  # group -> {live channel removed from it: reason}
        self._wsm_cleaning = "receive"

    async def _wsm_send(self, channel, message):
        await super()._wsm_send(channel, message)
        self._wsm_hold_last(channel, _envelope.current())

    def _wsm_hold_last(self, channel, env):
        # channels' queue entries are (expires at, copy of the message); the copy is
        # what the reader gets, so the envelope is held for that object.
        _envelope.hold(self.channels[channel]._queue[-1][1], env)

    async def _wsm_group_send(self, group, message):
        # channels' group_send, counting what it silently skips.
        assert isinstance(message, dict), "Message is not a dict"
        compat.require_valid_group_name(self, group)
        self._wsm_cleaning = "group_send"
        try:
            self._clean_expired()
        finally:
            self._wsm_cleaning = "receive"
        for channel, reason in list(self._wsm_lapsed.get(group, {}).items()):
            _lm.lost("group_send", reason, 1, group, _sessions.get(channel))
        reached = skipped = 0
        env = _envelope.current()
        send = _channels_layers.InMemoryChannelLayer.send  # the plain send: no double count
        for channel in list(self.groups.get(group, ())):
            try:
                await send(self, channel, message)
            except ChannelFull:
                if channel not in self._wsm_gone:  # a gone reader's full queue loses nothing
                    skipped += 1
            else:
                reached += 1
                self._wsm_hold_last(channel, env)
        return reached, skipped

    def _clean_expired(self):
        # channels' _clean_expired (4.x), counting each expired message and each
        # live member it removes from a group.
        kind = self._wsm_cleaning
        for channel, queue in list(self.channels.items()):
            expired = 0
            while not queue.empty() and queue._queue[0][0] < time.time():
                _envelope.drop(queue.get_nowait()[1])
                expired += 1
                self._wsm_remove_from_groups(channel, "expired")
                if queue.empty():
                    self.channels.pop(channel, None)
            if expired and channel not in self._wsm_gone:
                _lm.lost(kind, "expired", expired, channel, _sessions.get(channel))
        timeout = int(time.time()) - self.group_expiry
        for group, channels in self.groups.items():
            for name, timestamp in list(channels.items()):
                if timestamp and timestamp < timeout:
                    channels.pop(name, None)
                    self._wsm_lapse(group, name, "group_expiry")

    def _remove_from_groups(self, channel):
        self._wsm_remove_from_groups(channel, "expired")

    def _wsm_remove_from_groups(self, channel, reason):
        for group, channels in self.groups.items():
            if channels.pop(channel, None) is not None:
                self._wsm_lapse(group, channel, reason)

    def _wsm_lapse(self, group, channel, reason):
        if group in self._wsm_joined.get(channel, ()):
            self._wsm_lapsed.setdefault(group, {})[channel] = reason
            if reason == "group_expiry":
                _lm.lost("group_add", reason, 1, group, _sessions.get(channel),
                         event="ws_layer_membership_lapsed")

    def _wsm_rejoined(self, group, channel, joined=None):
        if joined is not None:  # a revived reader: what its memberships became meanwhile
            if channel not in self.groups.get(group, ()):
                reason = "group_expiry" if joined < time.time() - self.group_expiry else "expired"
                self._wsm_lapsed.setdefault(group, {})[channel] = reason
            return
        lapsed = self._wsm_lapsed.get(group)
        if lapsed is not None and lapsed.pop(channel, None) is not None and not lapsed:
            del self._wsm_lapsed[group]

    async def _wsm_left(self, group, channel):
        self._wsm_rejoined(group, channel)

    async def flush(self):
        await super().flush()
        self._wsm_lapsed.clear()
        self._wsm_forget()


_REDIS_BACKENDS = ("RedisChannelLayer", "RedisPubSubChannelLayer")


def __getattr__(name):
    # The Redis backends load channels_redis, redis-py and what redis-py pulls in (its
    # OpenTelemetry SDK metrics, cryptography): some 150 modules and ~20,000 objects that every
    # full garbage collection walks. A process that never names them never pays for them.
    if name not in _REDIS_BACKENDS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from . import layers_redis
    except ImportError as exc:  # the redis extra is not installed
        missing = exc

        class _Missing:
            def __init__(self, *args, **kwargs):
                raise ImportError(f"channels_redis is not installed: {missing}")

        _Missing.__name__ = _Missing.__qualname__ = name
        globals()[name] = _Missing
        return _Missing
    for backend in _REDIS_BACKENDS:
        globals()[backend] = getattr(layers_redis, backend)
    return globals()[name]
