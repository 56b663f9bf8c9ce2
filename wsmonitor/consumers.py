"""Instrumented channels consumers.

Instrumentation sits at the ASGI level (``__call__``, ``dispatch`` and the
``send`` callable handed to channels), so subclasses write plain channels code
and never need to call ``super()`` in their hooks.
"""

import asyncio
import atexit
import contextlib
import time
import uuid

import structlog
from channels.exceptions import StopConsumer
from channels.generic.websocket import (
    AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer, JsonWebsocketConsumer, WebsocketConsumer,
)
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import layers as _layers
from . import metrics as _metrics
from . import registry as _registry
from . import saturation as _saturation
from . import tracing
from .conf import get_config
from .heartbeat import HeartbeatMixin, reported_reconnect_attempts
from .logging import logger
from .streaming import StreamingMixin

_UNSET = object()
_STAGES = {"websocket.connect": "connect", "websocket.receive": "receive",
           "websocket.disconnect": "disconnect"}
ENVELOPE_KEY = _layers.ENVELOPE_KEY  # channel-layer events: wsmonitor's own data


class Connection:
    """Per-connection state: what the close log line, the metrics and the spans need."""

    __slots__ = (
        "session_id", "label", "metrics", "logs", "tracer", "span", "config", "asgi_send",
        "accepted_at", "rejected", "code", "counted_error", "finished",
        "messages_in", "messages_out", "bytes_in", "bytes_out",
    )

    def __init__(self, session_id, label, metrics, logs, tracer, config, asgi_send):
        self.session_id = session_id
        self.label = label
        self.metrics = metrics  # BoundMetrics, or None when metrics are off
        self.logs = logs
        self.tracer = tracer  # None when tracing is off or no provider is installed
        self.span = None  # the ws.connection span
        self.config = config
        self.asgi_send = asgi_send
        self.accepted_at = None
        self.rejected = None  # the reject reason, once refused
        self.code = _UNSET
        self.counted_error = None  # the exception already counted at its stage
        self.finished = False
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0


def _payload_size(message):
    text = message.get("text")
    if text is not None:
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    data = message.get("bytes")
    return len(data) if data is not None else 0


#: Consumers whose connection has not finished yet, for :func:`_finish_at_exit`.
_unfinished = set()


@atexit.register
def _finish_at_exit():
    """Record the end of every connection still open when the process exits.

    On SIGTERM daphne 4.2.3 means to cancel every application task, but its
    kill_all_applications() raises KeyError on an open WebSocket and the loop
    stops with the tasks pending: no finally block runs. What the process
    leaves unrecorded here is lost for good.
    """
    for consumer in list(_unfinished):
        conn = consumer._wsm
        span_scope = trace.use_span(conn.span) if conn.span else contextlib.nullcontext()
        with structlog.contextvars.bound_contextvars(session_id=conn.session_id), span_scope:
            consumer._wsm_finish(None, shutdown=True)
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush(5000)


def _switch(consumer_value, setting):
    return setting if consumer_value is None else consumer_value


class InstrumentedMixin(HeartbeatMixin, StreamingMixin):
    """Metrics, logs, spans and session IDs for a channels WebSocket consumer."""

    #: Value of the ``consumer`` label; defaults to the class name.
    wsmonitor_label = None
    #: Per-consumer switches; None follows ``WSMONITOR["METRICS"]`` / ``["LOGS"]`` / ``["TRACING"]``.
    wsmonitor_metrics = None
    wsmonitor_logs = None
    wsmonitor_tracing = None

    _wsm = None
    session_id = None

    async def __call__(self, scope, receive, send):
        config = get_config()
        metrics_on = _switch(self.wsmonitor_metrics, config["METRICS"])
        logs_on = _switch(self.wsmonitor_logs, config["LOGS"])
        tracer = tracing.get_tracer() if _switch(self.wsmonitor_tracing, config["TRACING"]) else None
        if not (metrics_on or logs_on or tracer):
            return await super().__call__(scope, receive, send)

        self.session_id = session_id = str(uuid.uuid4())
        scope.setdefault("wsmonitor", {})["session_id"] = session_id
        label = self.wsmonitor_label or type(self).__name__
        self._wsm = conn = Connection(session_id, label,
                                      _metrics.bound(label) if metrics_on else None,
                                      logs_on, tracer, config, send)
        _unfinished.add(self)
        span_scope = contextlib.nullcontext()
        if tracer is not None:
            conn.span = tracing.start_connection_span(tracer, scope, session_id, label)
            span_scope = trace.use_span(conn.span, record_exception=False,
                                        set_status_on_exception=False)
        crashed = None
        with structlog.contextvars.bound_contextvars(session_id=session_id), span_scope:
            try:
                await super().__call__(scope, receive, self._wsm_send)
            except asyncio.CancelledError:
                raise  # server shutdown: daphne cancels without a close frame
            except BaseException as exc:
                crashed = exc
                if exc is not conn.counted_error:
                    # Raised outside any handler: the channel layer's receive.
                    self._wsm_error("layer", exc)
                raise
            finally:
                self._wsm_ended()
                self._wsm_finish(crashed)

    async def dispatch(self, message):
        envelope = None
        if ENVELOPE_KEY in message:
            # Channel-layer envelope (wsmonitor.layers): delivery time and trace context,
            # then out of the handlers' way.
            envelope, message = _layers.received(message, self._wsm)
        conn = self._wsm
        if conn is None:
            return await super().dispatch(message)
        stage = _STAGES.get(message["type"], "handler")
        m = conn.metrics
        started = None
        if stage == "receive":
            if self._wsm_heartbeat is not None and self._wsm_heartbeat.absorb(message):
                return  # a heartbeat pong: not the application's, not a counted message
            size = _payload_size(message)
            conn.messages_in += 1
            conn.bytes_in += size
            if m is not None:
                m.messages_in.inc()
                m.size_in.observe(size)
                started = time.perf_counter()
        elif stage == "disconnect" and conn.code is _UNSET:
            conn.code = message.get("code")
        span = None
        if conn.tracer is not None and (stage == "receive" or stage == "handler"):
            span = self._wsm_handler_span(conn, stage, message, envelope)
        try:
            if span is None:
                return await super().dispatch(message)
            with trace.use_span(span, record_exception=False, set_status_on_exception=False):
                return await super().dispatch(message)
        except StopConsumer:
            raise
        except Exception as exc:
            self._wsm_error(stage, exc, span)
            raise
        finally:
            if started is not None:
                m.handling.observe(time.perf_counter() - started)
            if span is not None:
                span.end()

    def _wsm_handler_span(self, conn, stage, message, envelope=None):
        config = conn.config
        if stage == "receive":
            if not config["MESSAGE_SPANS"]:
                return None
            parent = (tracing.message_context(message.get("text"), config["TRACEPARENT_FIELD"])
                      if isinstance(self, (AsyncJsonWebsocketConsumer, JsonWebsocketConsumer))
                      else None)
            name, kind = f"{conn.label} receive", SpanKind.SERVER
            new_trace = config["TRACE_MODEL"] == "message"
        else:
            parent = tracing.envelope_context(envelope)
            if parent is None:
                return None  # only events that carry a trace continue one
            name, kind, new_trace = f"{conn.label} {message['type']}", SpanKind.CONSUMER, True
        return tracing.start_handler_span(conn.tracer, name, parent, conn.span,
                                          conn.session_id, kind, new_trace)

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
        subprotocol = message.get("subprotocol")
        if conn.span is not None:
            if subprotocol:
                conn.span.set_attribute("websocket.subprotocol", subprotocol)
            if conn.config["SPLIT_CONNECTION_SPAN"]:
                conn.span.end()
        if conn.logs:
            client = self.scope.get("client")
            logger.info(
                "ws_open", consumer=conn.label, path=self.scope.get("path"),
                client=f"{client[0]}:{client[1]}" if client else None, subprotocol=subprotocol,
            )
        _registry.opened(self)  # session registry (wsmonitor.registry), when configured
        self._wsm_opened()

    # --- Heartbeat, reconnect reports, saturation sampler (issue 5) ----------------
    _wsm_sampling = False

    def _wsm_opened(self):
        """The accept went out: start what lives as long as the connection."""
        conn = self._wsm
        _saturation.acquire()
        self._wsm_sampling = True
        attempts = reported_reconnect_attempts(self.scope)
        if attempts is not None and conn.metrics is not None:
            _metrics.count_reconnect(conn.metrics.consumer, attempts)
        self._wsm_heartbeat_start(conn.asgi_send, conn.metrics, conn.logs,
                                  closed=lambda: conn.code is not _UNSET)

    def _wsm_ended(self):
        """Every path out of ``__call__``: stop the heartbeat task and release the sampler."""
        self._wsm_heartbeat_stop()
        if self._wsm_sampling:
            self._wsm_sampling = False
            _saturation.release()
    # --- end of issue 5 block -------------------------------------------------------

    def _wsm_rejected(self, reason):
        conn = self._wsm
        conn.rejected = reason
        if conn.metrics is not None:
            conn.metrics.rejected(reason)
        if conn.logs:
            logger.info("ws_reject", consumer=conn.label, path=self.scope.get("path"),
                        reason=reason)

    def _wsm_error(self, stage, exc, span=None):
        conn = self._wsm
        conn.counted_error = exc
        if conn.metrics is not None:
            conn.metrics.error(stage)
        span = span or trace.get_current_span()  # the message span, else the connection's
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__} in {stage}"))
        if conn.logs:
            logger.error("ws_error", stage=stage, exc_info=exc)

    async def wsmonitor_close(self, event):
        """Close this connection on request (``manage.py wsmonitor_sessions close``)."""
        code = event.get("code", 1000)
        if event.get("session_id") == self.session_id and _registry.valid_close_code(code):
            await self.close(code=code)

    def _wsm_finish(self, crashed, shutdown=False):
        """Runs exactly once per connection: on every path out of ``__call__``, or at exit."""
        conn = self._wsm
        if conn.finished:
            return
        conn.finished = True
        _unfinished.discard(self)
        if conn.accepted_at is None:
            if not conn.rejected:
                self._wsm_rejected("error" if crashed else "abandoned")
            if conn.span is not None:
                tracing.end_connection_span(conn.span, None, conn, (), conn.rejected)
            return
        _registry.closed(self)
        code = conn.code
        if code is _UNSET:
            # daphne answers an application exception with 1011; a cancelled
            # task (shutdown) ends the TCP connection without a close frame.
            code = 1011 if crashed else 1006
        elif code is None:
            code = 1005  # a close frame without a status code
        duration = time.monotonic() - conn.accepted_at
        m = conn.metrics
        if m is not None:
            m.active.dec()
            m.closed(code)
            m.duration.observe(duration)
        if conn.span is not None:
            span = conn.span
            if conn.config["SPLIT_CONNECTION_SPAN"]:
                span = tracing.start_close_span(conn.tracer, span, conn.session_id)
            if shutdown and span.is_recording():
                span.set_attribute("websocket.close.reason", "server_shutdown")
            tracing.end_connection_span(span, code, conn, conn.config["ERROR_CLOSE_CODES"])
        if conn.logs:
            extra = {"reason": "server_shutdown"} if shutdown else {}
            logger.info(
                "ws_close", code=code, duration=round(duration, 6),
                messages_in=conn.messages_in, messages_out=conn.messages_out,
                bytes_in=conn.bytes_in, bytes_out=conn.bytes_out, **extra,
            )


def _with_traceparent(conn, content):
    """Reverse propagation: a JSON dict the server sends carries the current traceparent."""
    if (conn is not None and conn.tracer is not None and conn.config["INJECT_TRACEPARENT"]
            and isinstance(content, dict)):
        carrier = tracing.inject({})
        if "traceparent" in carrier:
            return {**content, conn.config["TRACEPARENT_FIELD"]: carrier["traceparent"]}
    return content


class InstrumentedAsyncWebsocketConsumer(InstrumentedMixin, AsyncWebsocketConsumer):
    """channels' ``AsyncWebsocketConsumer`` with wsmonitor's metrics, logs and spans."""


class InstrumentedAsyncJsonWebsocketConsumer(InstrumentedMixin, AsyncJsonWebsocketConsumer):
    """channels' ``AsyncJsonWebsocketConsumer`` with wsmonitor's metrics, logs and spans."""

    async def send_json(self, content, close=False):
        await super().send_json(_with_traceparent(self._wsm, content), close=close)


class _SyncCloseHandler:
    """Sync consumers call handlers in a thread: the close request handler must be sync too."""

    def wsmonitor_close(self, event):
        code = event.get("code", 1000)
        if event.get("session_id") == self.session_id and _registry.valid_close_code(code):
            self.close(code=code)


class InstrumentedWebsocketConsumer(_SyncCloseHandler, InstrumentedMixin, WebsocketConsumer):
    """channels' sync ``WebsocketConsumer`` with wsmonitor's metrics, logs and spans."""


class InstrumentedJsonWebsocketConsumer(_SyncCloseHandler, InstrumentedMixin, JsonWebsocketConsumer):
    """channels' sync ``JsonWebsocketConsumer`` with wsmonitor's metrics, logs and spans."""

    def send_json(self, content, close=False):
        super().send_json(_with_traceparent(self._wsm, content), close=close)
