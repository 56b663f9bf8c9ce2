"""Instrumented channels consumers.

Instrumentation sits at the ASGI level (``__call__``, ``dispatch`` and the
``send`` callable handed to channels), so subclasses write plain channels code
and never need to call ``super()`` in their hooks.
"""

import asyncio
import time

from channels.exceptions import StopConsumer
from channels.generic.websocket import (
    AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer, JsonWebsocketConsumer, WebsocketConsumer,
)
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import layers as _layers
from . import metrics as _metrics
from . import registry as _registry
from . import saturation as _saturation
from . import tracing
from .conf import get_config
from .connection import Connection
from .heartbeat import HeartbeatMixin, reported_reconnect_attempts
from .streaming import StreamingMixin

_STAGES = {"websocket.connect": "connect", "websocket.receive": "receive",
           "websocket.disconnect": "disconnect"}
ENVELOPE_KEY = _layers.ENVELOPE_KEY  # channel-layer events: wsmonitor's own data


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
        label = self.wsmonitor_label or type(self).__name__
        shared = scope.get("wsmonitor")
        conn = shared.get("connection") if shared else None
        if conn is not None and not conn.adopted:
            # wsmonitor's middleware runs outside: adopt its connection, so each
            # socket is counted once, under this consumer's label.
            conn.adopted = True
            conn.relabel(label, metrics_on, logs_on)
            asgi_send = send  # already the connection's counting send
        else:
            tracer = (tracing.get_tracer() if _switch(self.wsmonitor_tracing, config["TRACING"])
                      else None)
            if not (metrics_on or logs_on or tracer):
                return await super().__call__(scope, receive, send)
            conn = Connection(scope, label, config, send, metrics_on, logs_on, tracer)
            scope.setdefault("wsmonitor", {})["connection"] = conn
            asgi_send = conn.send
        scope["wsmonitor"]["session_id"] = self.session_id = conn.session_id
        self._wsm = conn
        conn.owner = self
        crashed = None
        entered = conn.enter()
        try:
            await super().__call__(scope, receive, asgi_send)
        except asyncio.CancelledError:
            raise  # server shutdown: daphne cancels without a close frame
        except BaseException as exc:
            crashed = exc
            # Counted already at its stage, or raised outside any handler:
            # the channel layer's receive.
            conn.error("layer", exc)
            raise
        finally:
            self._wsm_ended()
            conn.finish(crashed)
            conn.leave(entered)

    async def dispatch(self, message):
        conn = self._wsm
        envelope = None
        if ENVELOPE_KEY in message:
            # Channel-layer envelope (wsmonitor.layers): delivery time and trace context,
            # then out of the handlers' way.
            envelope, message = _layers.received(message, conn)
        if conn is None:
            return await super().dispatch(message)
        started = span = None
        kind = message["type"]
        if kind == "websocket.receive":  # the hot path: kept to a few calls
            stage = "receive"
            heartbeat = self._wsm_heartbeat
            if heartbeat is not None and heartbeat.absorb(message):
                return  # a heartbeat pong: not the application's, not a counted message
            conn.received(message)
            if conn.tracer is not None:
                span = self._wsm_handler_span(conn, stage, message, envelope)
            if conn.metrics is not None:
                started = time.perf_counter()
        else:
            stage = _STAGES.get(kind, "handler")
            if stage == "disconnect":
                conn.disconnected(message.get("code"))
            elif stage == "handler" and conn.tracer is not None:
                span = self._wsm_handler_span(conn, stage, message, envelope)
        token = None if span is None else otel_context.attach(trace.set_span_in_context(span))
        try:
            return await super().dispatch(message)
        except StopConsumer:
            raise
        except Exception as exc:
            conn.error(stage, exc, span)
            raise
        finally:
            if started is not None:
                elapsed = time.perf_counter() - started
                exemplar = tracing.exemplar(span) if span is not None else None
                if exemplar is None:
                    conn.metrics.observe_handling(elapsed)
                else:  # a slow message in Grafana leads to its trace
                    conn.metrics.handling.observe(elapsed, exemplar)
            if span is not None:
                otel_context.detach(token)
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
                                          conn.session_id, kind, new_trace, conn.links)

    # --- Heartbeat, reconnect reports, saturation sampler (issue 5) ----------------
    _wsm_sampling = False

    def _wsm_opened(self):
        """The accept went out: start what lives as long as the connection."""
        conn = self._wsm
        _registry.opened(self)  # session registry (wsmonitor.registry), when configured
        _saturation.acquire()
        self._wsm_sampling = True
        attempts = reported_reconnect_attempts(self.scope)
        if attempts is not None and conn.metrics is not None:
            _metrics.count_reconnect(conn.metrics.consumer, attempts)
        self._wsm_heartbeat_start(conn.asgi_send, conn.metrics, conn.logs,
                                  closed=lambda: conn.closing)

    def _wsm_ended(self):
        """Every path out of ``__call__``: stop the heartbeat task and release the sampler."""
        self._wsm_heartbeat_stop()
        if self._wsm_sampling:
            self._wsm_sampling = False
            _saturation.release()
    # --- end of issue 5 block -------------------------------------------------------

    async def wsmonitor_close(self, event):
        """Close this connection on request (``manage.py wsmonitor_sessions close``)."""
        code = event.get("code", 1000)
        if event.get("session_id") == self.session_id and _registry.valid_close_code(code):
            await self.close(code=code)

    def _wsm_closed(self):
        if self._wsm.accepted_at is not None:
            _registry.closed(self)


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
