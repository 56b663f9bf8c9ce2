"""Application-level heartbeat and reconnect reports: the wire protocol wsmonitor.js speaks.

ASGI gives the application no ping/pong frames (daphne answers protocol pings
itself), so an opted-in consumer sends small ping *messages* and the client
answers them. Pongs are consumed before ``receive`` and are not counted in
``ws_messages_total``.

JSON (default)::

    server: {"type": "wsmonitor.ping", "id": 7}
    client: {"type": "wsmonitor.pong", "id": 7}

Prefix frames (``wsmonitor_heartbeat_frames = ("ping:", "pong:")``)::

    server: ping:7
    client: pong:7
"""

import asyncio
import json
import time
from collections import deque

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import Counter, Histogram

from . import features
from . import metrics as _metrics
from . import tracing
from .logging import logger
from .reconnect import RECONNECT_PARAM, reported_reconnect_attempts  # noqa: F401 - moved there

PING_TYPE = "wsmonitor.ping"
PONG_TYPE = "wsmonitor.pong"
#: Close code sent to a client that stopped answering heartbeats.
HEARTBEAT_TIMEOUT_CODE = 4408
#: Longest text frame inspected as a possible pong; longer ones go to the application untouched.
MAX_PONG_LENGTH = 128
#: Unanswered pings remembered per connection (for RTT); older ones only count for liveness.
MAX_PENDING = 16

HEARTBEAT_RTT = Histogram(
    "ws_heartbeat_rtt_seconds",
    "Application heartbeat round trip: ping sent by the consumer to pong dispatched to it.",
    _metrics.LABELS, buckets=(0.005, 0.025, 0.1, 0.25, 1, 2.5, 5, 10),
)
HEARTBEAT_PINGS = Counter("ws_heartbeat_pings", "Application heartbeat pings sent.",
                          _metrics.LABELS)
HEARTBEAT_TIMEOUTS = Counter(
    "ws_heartbeat_timeouts",
    "Connections closed with 4408 because heartbeats went unanswered past the timeout.",
    _metrics.LABELS,
)
_metrics.reserve_close_code(HEARTBEAT_TIMEOUT_CODE)


class BoundHeartbeat:
    """The heartbeat children of one consumer label."""

    __slots__ = ("rtt", "pings", "timeouts")

    def __init__(self, consumer, node):
        self.rtt = HEARTBEAT_RTT.labels(consumer, node)
        self.pings = HEARTBEAT_PINGS.labels(consumer, node)
        self.timeouts = HEARTBEAT_TIMEOUTS.labels(consumer, node)
        # starts at 0, like 1006
        _metrics.CLOSES.labels(consumer, node, str(HEARTBEAT_TIMEOUT_CODE))


_bound = _metrics.cache()


def bound_heartbeat(consumer, node):
    try:
        return _bound[consumer, node]
    except KeyError:
        _bound[consumer, node] = result = BoundHeartbeat(consumer, node)
        return result


class Heartbeat:
    """The heartbeat of one connection: a task sending pings, and the pongs it has seen."""

    def __init__(self, conn, interval, timeout, required, frames, metrics):
        self.conn = conn
        self.send = conn.asgi_send  # the raw ASGI send: pings are not application messages
        self.interval, self.timeout, self.required = interval, timeout, required
        self.ping_prefix, self.pong_prefix = frames or (None, None)
        self.metrics = metrics  # BoundHeartbeat or None
        self.logs = conn.logs
        self.seq = 0
        self.pending = deque()  # (id, monotonic time sent), oldest first
        self.unanswered_since = None  # when the oldest unanswered ping went out
        self.answered = 0
        self.last_answered = 0  # id of the newest ping answered
        self.last_rtt = None  # seconds, of the newest pong that answered a remembered ping
        self.peer = conn.scope.get("client")  # for the send backlog in the timeout log
        self.task = None

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self.run())

    def stop(self):
        if self.task is not None and not self.task.done():
            try:
                self.task.cancel()
            except RuntimeError:  # at exit, the loop is closed: the task dies with it
                pass

    @property
    def enforcing(self):
        """Only clients that speak the heartbeat (or consumers that require it) can time out."""
        return self.required or self.answered > 0

    async def run(self):
        next_ping = time.monotonic() + self.interval
        try:
            while True:
                wake = next_ping
                if self.enforcing and self.unanswered_since is not None:
                    wake = min(wake, self.unanswered_since + self.timeout)
                await asyncio.sleep(max(0.0, wake - time.monotonic()))
                if self.conn.closing:
                    return
                now = time.monotonic()
                if (self.enforcing and self.unanswered_since is not None
                        and now - self.unanswered_since >= self.timeout):
                    await self._timed_out(now)
                    return
                if now >= next_ping:
                    await self._ping(now)
                    next_ping = now + self.interval
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let the heartbeat break the connection
            if self.logs:
                logger.warning("ws_heartbeat_error", exc_info=exc)

    async def _ping(self, now):
        self.seq += 1
        self.pending.append((self.seq, now))
        if len(self.pending) > MAX_PENDING:
            self.pending.popleft()
        if self.unanswered_since is None:
            self.unanswered_since = now
        if self.ping_prefix is None:
            text = f'{{"type":"{PING_TYPE}","id":{self.seq}}}'
        else:
            text = f"{self.ping_prefix}{self.seq}"
        await self.send({"type": "websocket.send", "text": text})
        if self.metrics is not None:
            self.metrics.pings.inc()

    async def _timed_out(self, now):
        if self.metrics is not None:
            self.metrics.timeouts.inc()
        if self.logs:
            from .saturation import connection_backlog

            logger.warning(
                "ws_heartbeat_timeout", code=HEARTBEAT_TIMEOUT_CODE,
                unanswered_for=round(now - self.unanswered_since, 3),
                pings_unanswered=self.seq - self.last_answered,
                pongs=self.answered, send_backlog_bytes=connection_backlog(self.peer),
            )
        # Through the ASGI send on this loop: works for sync consumers too.
        await self.conn.close(HEARTBEAT_TIMEOUT_CODE, by="heartbeat")

    def absorb(self, message):
        """If ``message`` is a pong, record it and return True: it must not reach the application."""
        text = message.get("text")
        if text is None or len(text) > MAX_PONG_LENGTH:
            return False
        if self.pong_prefix is None:
            if PONG_TYPE not in text:
                return False
            try:
                content = json.loads(text)
            except ValueError:
                return False
            if not (isinstance(content, dict) and content.get("type") == PONG_TYPE):
                return False
            ident = content.get("id")
        else:
            if not text.startswith(self.pong_prefix):
                return False
            digits = text[len(self.pong_prefix):]
            if not (digits.isascii() and digits.isdigit()):
                return False
            ident = int(digits)
        self.pong(ident)
        return True

    def pong(self, ident):
        now = time.monotonic()
        if type(ident) is not int or not 0 < ident <= self.seq:
            return  # not an answer to any ping of ours: swallowed, proves nothing
        pending = self.pending
        while pending and pending[0][0] < ident:
            pending.popleft()  # never answered: lost, or skipped by the client
        if pending and pending[0][0] == ident:
            _, sent = pending.popleft()
            self.last_rtt = rtt = now - sent  # what the console shows per session
            if self.metrics is not None:
                # The connection span's trace, when sampled: a high RTT leads to its session.
                self.metrics.rtt.observe(rtt, tracing.exemplar())
        elif ident <= self.last_answered:
            return  # a duplicate
        # else: a ping too old to remember (MAX_PENDING): alive, but no RTT to observe
        self.answered += 1
        self.last_answered = ident
        self.unanswered_since = pending[0][1] if pending else None


class HeartbeatMixin:
    """Class attributes that switch the heartbeat on for a consumer (checked at class definition)."""

    #: Seconds between pings; True uses ``WSMONITOR["HEARTBEAT_INTERVAL"]``; None/False: off.
    wsmonitor_heartbeat = None
    #: Seconds a ping may stay unanswered; None uses ``WSMONITOR["HEARTBEAT_TIMEOUT"]``.
    wsmonitor_heartbeat_timeout = None
    #: Close clients that never answer; by default only clients that answered once can time out.
    wsmonitor_heartbeat_required = False
    #: ``(ping_prefix, pong_prefix)`` for text frames like ``ping:7``; None: JSON messages.
    wsmonitor_heartbeat_frames = None


def _seconds(value):
    return type(value) in (int, float) and 0 < value < float("inf")


class HeartbeatFeature(features.Feature):
    """Pings, pongs and the zombie close of consumers that set ``wsmonitor_heartbeat``."""

    name = "heartbeat"
    kinds = frozenset({"async", "sync"})

    def options(self, cls):
        interval = getattr(cls, "wsmonitor_heartbeat", None)
        if interval is None or interval is False:
            return None
        name = f"{cls.__module__}.{cls.__qualname__}"
        timeout = getattr(cls, "wsmonitor_heartbeat_timeout", None)
        if interval is not True and not _seconds(interval):
            raise ImproperlyConfigured(
                f"{name}.wsmonitor_heartbeat must be a positive number of seconds, True for "
                f'WSMONITOR["HEARTBEAT_INTERVAL"], or None to switch it off; not {interval!r}.')
        if timeout is not None and not _seconds(timeout):
            raise ImproperlyConfigured(
                f"{name}.wsmonitor_heartbeat_timeout must be a positive number of seconds, or "
                f'None for WSMONITOR["HEARTBEAT_TIMEOUT"]; not {timeout!r}.')
        required = getattr(cls, "wsmonitor_heartbeat_required", False)
        if not isinstance(required, bool):
            raise ImproperlyConfigured(
                f"{name}.wsmonitor_heartbeat_required must be True or False, not {required!r}.")
        frames = getattr(cls, "wsmonitor_heartbeat_frames", None)
        if frames is not None:
            if not (isinstance(frames, (tuple, list)) and len(frames) == 2
                    and all(isinstance(f, str) and f for f in frames) and frames[0] != frames[1]):
                raise ImproperlyConfigured(
                    f"{name}.wsmonitor_heartbeat_frames must be two different non-empty "
                    f'strings (ping prefix, pong prefix) such as ("ping:", "pong:"), or None, '
                    f"not {frames!r}.")
            frames = tuple(frames)
        return interval, timeout, required, frames

    def opened(self, conn):
        opts = conn.options.get("heartbeat")
        if opts is None:
            return
        interval, timeout, required, frames = opts
        config = conn.config
        if interval is True:
            interval = config["HEARTBEAT_INTERVAL"]
        if timeout is None:
            timeout = config["HEARTBEAT_TIMEOUT"]
        metrics = conn.metrics
        heartbeat = Heartbeat(
            conn, interval, timeout, required, frames,
            bound_heartbeat(metrics.consumer, metrics.node) if metrics is not None else None)
        conn.state["heartbeat"] = heartbeat
        conn.add_absorber(heartbeat.absorb)
        heartbeat.start()

    def closed(self, conn):
        heartbeat = conn.state.get("heartbeat")
        if heartbeat is not None:
            heartbeat.stop()


features.register(HeartbeatFeature())
