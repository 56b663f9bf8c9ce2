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
from urllib.parse import parse_qsl

from django.core.exceptions import ImproperlyConfigured

from . import metrics as _metrics
from . import tracing
from .conf import get_config
from .logging import logger

PING_TYPE = "wsmonitor.ping"
PONG_TYPE = "wsmonitor.pong"
#: Query parameter wsmonitor.js sets on a reconnect: how many attempts it took.
RECONNECT_PARAM = "reconnect"
#: Longest text frame inspected as a possible pong; longer ones go to the application untouched.
MAX_PONG_LENGTH = 128
#: Unanswered pings remembered per connection (for RTT); older ones only count for liveness.
MAX_PENDING = 16


class Heartbeat:
    """The heartbeat of one connection: a task sending pings, and the pongs it has seen."""

    def __init__(self, send, interval, timeout, required, frames, metrics, logs, closed, close):
        self.send = send  # the raw ASGI send: pings are not application messages
        self.interval, self.timeout, self.required = interval, timeout, required
        self.ping_prefix, self.pong_prefix = frames or (None, None)
        self.metrics = metrics  # BoundHeartbeat or None
        self.logs = logs
        self.closed = closed  # () -> bool: a close went out or came in
        self.close = close  # async (code) -> None
        self.seq = 0
        self.pending = deque()  # (id, monotonic time sent), oldest first
        self.unanswered_since = None  # when the oldest unanswered ping went out
        self.answered = 0
        self.last_answered = 0  # id of the newest ping answered
        self.peer = None  # the client (host, port), for the send backlog in the timeout log
        self.task = None

    def start(self):
        self.task = asyncio.get_running_loop().create_task(self.run())

    def stop(self):
        if self.task is not None and not self.task.done():
            self.task.cancel()

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
                if self.closed():
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
                "ws_heartbeat_timeout", code=_metrics.HEARTBEAT_TIMEOUT_CODE,
                unanswered_for=round(now - self.unanswered_since, 3),
                pings_unanswered=self.seq - self.last_answered,
                pongs=self.answered, send_backlog_bytes=connection_backlog(self.peer),
            )
        await self.close(_metrics.HEARTBEAT_TIMEOUT_CODE)

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
            if self.metrics is not None:
                # The connection span's trace, when sampled: a high RTT leads to its session.
                self.metrics.rtt.observe(now - sent, tracing.exemplar())
        elif ident <= self.last_answered:
            return  # a duplicate
        # else: a ping too old to remember (MAX_PENDING): alive, but no RTT to observe
        self.answered += 1
        self.last_answered = ident
        self.unanswered_since = pending[0][1] if pending else None


class HeartbeatMixin:
    """Class attributes that switch the heartbeat on for a consumer, and its start and stop."""

    #: Seconds between pings; True uses ``WSMONITOR["HEARTBEAT_INTERVAL"]``; None/False: off.
    wsmonitor_heartbeat = None
    #: Seconds a ping may stay unanswered; None uses ``WSMONITOR["HEARTBEAT_TIMEOUT"]``.
    wsmonitor_heartbeat_timeout = None
    #: Close clients that never answer; by default only clients that answered once can time out.
    wsmonitor_heartbeat_required = False
    #: ``(ping_prefix, pong_prefix)`` for text frames like ``ping:7``; None: JSON messages.
    wsmonitor_heartbeat_frames = None

    _wsm_heartbeat = None

    def _wsm_heartbeat_start(self, send, metrics, logs, closed):
        interval = self.wsmonitor_heartbeat
        if interval is None or interval is False:
            return
        config = get_config()
        if interval is True:
            interval = config["HEARTBEAT_INTERVAL"]
        timeout = self.wsmonitor_heartbeat_timeout or config["HEARTBEAT_TIMEOUT"]
        for name, value in (("wsmonitor_heartbeat", interval),
                            ("wsmonitor_heartbeat_timeout", timeout)):
            if not (type(value) in (int, float) and 0 < value < float("inf")):
                raise ImproperlyConfigured(
                    f"{type(self).__name__}.{name} must be a positive number of seconds "
                    f"(or True for the WSMONITOR default), not {value!r}.")
        label = self.wsmonitor_label or type(self).__name__
        self._wsm_heartbeat = heartbeat = Heartbeat(
            send, interval, timeout, self.wsmonitor_heartbeat_required,
            self.wsmonitor_heartbeat_frames,
            _metrics.bound_heartbeat(label) if metrics is not None else None,
            logs, closed, self._wsm_heartbeat_close,
        )
        heartbeat.peer = self.scope.get("client")
        heartbeat.start()

    async def _wsm_heartbeat_close(self, code):
        await self.close(code=code)

    def _wsm_heartbeat_stop(self):
        if self._wsm_heartbeat is not None:
            self._wsm_heartbeat.stop()


def reported_reconnect_attempts(scope):
    """The attempt count a client put in the ``reconnect`` query parameter, or None."""
    query = scope.get("query_string") or b""
    if RECONNECT_PARAM.encode() not in query:
        return None
    for key, value in parse_qsl(query.decode("latin-1")):
        if key == RECONNECT_PARAM:
            return int(value) if value.isdigit() and len(value) <= 6 and int(value) > 0 else None
    return None
