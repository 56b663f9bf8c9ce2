"""Instrumented channels consumers.

Instrumentation sits at the ASGI level (``__call__``, ``dispatch`` and the
``send`` callable handed to channels), so subclasses write plain channels code
and never need to call ``super()`` in their hooks.
"""

import asyncio
import time
import uuid

import structlog
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer

from . import metrics as _metrics
from .conf import get_config
from .logging import logger

_UNSET = object()


class Connection:
    """Per-connection state: what the close log line and the metrics need."""

    __slots__ = (
        "session_id", "metrics", "logs", "asgi_send", "accepted_at", "rejected",
        "code", "counted_error", "messages_in", "messages_out", "bytes_in", "bytes_out",
    )

    def __init__(self, session_id, metrics, logs, asgi_send):
        self.session_id = session_id
        self.metrics = metrics  # BoundMetrics, or None when metrics are off
        self.logs = logs
        self.asgi_send = asgi_send
        self.accepted_at = None
        self.rejected = False
        self.code = _UNSET
        self.counted_error = None  # the exception already counted at its stage
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0


def _payload_size(message):
    text = message.get("text")
    if text is not None:
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    data = message.get("bytes")
    return len(data) if data is not None else 0


_STAGES = {"websocket.connect": "connect", "websocket.receive": "receive",
           "websocket.disconnect": "disconnect"}


class InstrumentedMixin:
    """Metrics, logs and session IDs for a channels WebSocket consumer."""

    #: Value of the ``consumer`` label; defaults to the class name.
    wsmonitor_label = None
    #: Per-consumer switches; None follows ``WSMONITOR["METRICS"]`` / ``["LOGS"]``.
    wsmonitor_metrics = None
    wsmonitor_logs = None

    _wsm = None
    session_id = None

    async def __call__(self, scope, receive, send):
        config = get_config()
        metrics_on = config["METRICS"] if self.wsmonitor_metrics is None else self.wsmonitor_metrics
        logs_on = config["LOGS"] if self.wsmonitor_logs is None else self.wsmonitor_logs
        if not (metrics_on or logs_on):
            return await super().__call__(scope, receive, send)

        self.session_id = session_id = str(uuid.uuid4())
        scope.setdefault("wsmonitor", {})["session_id"] = session_id
        label = self.wsmonitor_label or type(self).__name__
        self._wsm = conn = Connection(
            session_id, _metrics.bound(label) if metrics_on else None, logs_on, send
        )
        crashed = False
        with structlog.contextvars.bound_contextvars(session_id=session_id):
            try:
                await super().__call__(scope, receive, self._wsm_send)
            except asyncio.CancelledError:
                raise  # server shutdown: daphne cancels without a close frame
            except BaseException as exc:
                crashed = True
                if exc is not conn.counted_error:
                    # Raised outside any handler: the channel layer's receive.
                    self._wsm_error("layer", exc)
                raise
            finally:
                self._wsm_finish(crashed)

    async def dispatch(self, message):
        conn = self._wsm
        if conn is None:
            return await super().dispatch(message)
        kind = message["type"]
        stage = _STAGES.get(kind, "handler")
        if stage == "receive":
            size = _payload_size(message)
            conn.messages_in += 1
            conn.bytes_in += size
            m = conn.metrics
            if m is not None:
                m.messages_in.inc()
                m.size_in.observe(size)
                started = time.perf_counter()
                try:
                    return await super().dispatch(message)
                except StopConsumer:
                    raise
                except Exception as exc:
                    self._wsm_error(stage, exc)
                    raise
                finally:
                    m.handling.observe(time.perf_counter() - started)
        elif stage == "disconnect" and conn.code is _UNSET:
            conn.code = message.get("code")
        try:
            return await super().dispatch(message)
        except StopConsumer:
            raise
        except Exception as exc:
            self._wsm_error(stage, exc)
            raise

    async def _wsm_send(self, message):
        """The ASGI ``send`` channels sees: counts what really goes out."""
        conn = self._wsm
        try:
            await conn.asgi_send(message)
        except Exception as exc:
            self._wsm_error("send", exc)
            raise
        kind = message["type"]
        if kind == "websocket.send":
            size = _payload_size(message)
            conn.messages_out += 1
            conn.bytes_out += size
            m = conn.metrics
            if m is not None:
                m.messages_out.inc()
                m.size_out.observe(size)
        elif kind == "websocket.accept":
            if conn.accepted_at is None and not conn.rejected:
                self._wsm_accepted(message)
        elif kind == "websocket.close":
            if conn.accepted_at is not None:
                if conn.code is _UNSET:
                    # The code we sent counts, whatever the peer answers; daphne sends 1000 for None.
                    conn.code = message.get("code") or 1000
            elif not conn.rejected:
                self._wsm_rejected("denied")

    def _wsm_accepted(self, message):
        conn = self._wsm
        conn.accepted_at = time.monotonic()
        m = conn.metrics
        if m is not None:
            m.connects.inc()
            m.active.inc()
        if conn.logs:
            client = self.scope.get("client")
            logger.info(
                "ws_open", consumer=self.wsmonitor_label or type(self).__name__,
                path=self.scope.get("path"), client=f"{client[0]}:{client[1]}" if client else None,
                subprotocol=message.get("subprotocol"),
            )

    def _wsm_rejected(self, reason):
        conn = self._wsm
        conn.rejected = True
        if conn.metrics is not None:
            conn.metrics.rejected(reason)
        if conn.logs:
            logger.info("ws_reject", consumer=self.wsmonitor_label or type(self).__name__,
                        path=self.scope.get("path"), reason=reason)

    def _wsm_error(self, stage, exc):
        conn = self._wsm
        conn.counted_error = exc
        if conn.metrics is not None:
            conn.metrics.error(stage)
        if conn.logs:
            logger.error("ws_error", stage=stage, exc_info=exc)

    def _wsm_finish(self, crashed):
        """Runs exactly once per connection, on every path out of ``__call__``."""
        conn = self._wsm
        if conn.accepted_at is None:
            if not conn.rejected:
                self._wsm_rejected("error" if crashed else "abandoned")
            return
        code = conn.code
        if code is _UNSET:
            # daphne answers an application exception with 1011; a cancelled
            # task (shutdown) ends the TCP connection without a close frame.
            code = 1011 if crashed else 1006
        duration = time.monotonic() - conn.accepted_at
        m = conn.metrics
        if m is not None:
            m.active.dec()
            m.closed(code)
            m.duration.observe(duration)
        if conn.logs:
            logger.info(
                "ws_close", code=code, duration=round(duration, 6),
                messages_in=conn.messages_in, messages_out=conn.messages_out,
                bytes_in=conn.bytes_in, bytes_out=conn.bytes_out,
            )


class InstrumentedAsyncWebsocketConsumer(InstrumentedMixin, AsyncWebsocketConsumer):
    """channels' ``AsyncWebsocketConsumer`` with wsmonitor's metrics and logs."""


class InstrumentedAsyncJsonWebsocketConsumer(InstrumentedMixin, AsyncJsonWebsocketConsumer):
    """channels' ``AsyncJsonWebsocketConsumer`` with wsmonitor's metrics and logs."""
