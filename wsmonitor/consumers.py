"""Instrumented channels consumers.

Instrumentation sits at the ASGI level (``__call__``, ``dispatch`` and the
``send`` callable handed to channels), so subclasses write plain channels code
and never need to call ``super()`` in their hooks. The books are kept by a
:class:`~wsmonitor.connection.Connection`; the ``wsmonitor_*`` class attributes
are checked when the class is defined.
"""

import asyncio
import functools
from time import perf_counter as _perf_counter

from asgiref.sync import async_to_sync, markcoroutinefunction
from channels import consumer as _channels_consumer
from channels.exceptions import StopConsumer
from channels.generic.websocket import (
    AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer, JsonWebsocketConsumer, WebsocketConsumer,
)
from django.core.exceptions import ImproperlyConfigured
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from . import compat, features
from . import layers as _layers
from . import tracing
from .conf import get_config
from .connection import Connection
from .heartbeat import HeartbeatMixin
from .logging import logger
from .streaming import StreamingMixin

_STAGES = {"websocket.connect": "connect", "websocket.receive": "receive",
           "websocket.disconnect": "disconnect"}
ENVELOPE_KEY = _layers.ENVELOPE_KEY  # channel-layer events: wsmonitor's own data
_received_from_layer = _layers.received
_SWITCHES = ("wsmonitor_metrics", "wsmonitor_logs", "wsmonitor_tracing")


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
    _wsm_receive = None  # what each message span needs, worked out once per connection
    _wsm_kind = "async"
    _wsm_options = {}
    _wsm_generation = -1
    _wsm_channels_dispatch = False
    session_id = None

    def __init_subclass__(cls, **kwargs):
        """Check the ``wsmonitor_*`` attributes now, not when a socket is already open."""
        super().__init_subclass__(**kwargs)
        name = f"{cls.__module__}.{cls.__qualname__}"
        label = cls.wsmonitor_label
        if label is not None and not (isinstance(label, str) and label):
            raise ImproperlyConfigured(f"{name}.wsmonitor_label must be a non-empty string or "
                                       f"None (the class name), not {label!r}.")
        for attr in _SWITCHES:
            if getattr(cls, attr) not in (None, True, False):
                raise ImproperlyConfigured(f"{name}.{attr} must be True, False or None (follow "
                                           f"WSMONITOR), not {getattr(cls, attr)!r}.")
        cls._wsm_kind = "sync" if getattr(cls, "_sync", False) else "async"
        cls._wsm_channels_dispatch = compat.channels_dispatch_inlinable(
            super(InstrumentedMixin, cls).dispatch)
        cls._wsm_options = features.class_options(cls, cls._wsm_kind)
        cls._wsm_generation = features.generation

    @classmethod
    def _wsm_current_options(cls):
        """The class's feature options, refreshed when features were (un)registered since."""
        if cls._wsm_generation != features.generation:
            cls._wsm_generation = features.generation
            try:
                cls._wsm_options = features.class_options(cls, cls._wsm_kind)
            except ImproperlyConfigured as exc:
                # Reported by the system check and at start-up; never break a connection.
                logger.error("ws_feature_refused", check="wsmonitor.E018", error=str(exc))
        return cls._wsm_options

    def __call__(self, scope, receive, send):
        # A plain method returning the coroutine that serves the socket: as_asgi() calls it
        # without a coroutine of its own, so an open connection holds one frame of
        # wsmonitor's and no more (see docs/benchmarks.md).
        return _serve(self, scope, receive, send)

    markcoroutinefunction(__call__)

    @classmethod
    def as_asgi(cls, **initkwargs):
        """channels' ``as_asgi()``, without the extra coroutine level per connection."""

        def app(scope, receive, send):
            return cls(**initkwargs)(scope, receive, send)

        markcoroutinefunction(app)
        app.consumer_class = cls
        app.consumer_initkwargs = initkwargs
        functools.update_wrapper(app, cls, updated=())
        return app

    def _wsm_open(self, scope, send):
        """This socket's connection (made, or adopted from the middleware), or None when
        every switch is off."""
        config = get_config()
        cls = type(self)
        metrics_on = _switch(self.wsmonitor_metrics, config["METRICS"])
        logs_on = _switch(self.wsmonitor_logs, config["LOGS"])
        label = self.wsmonitor_label or cls.__name__
        options = cls._wsm_current_options()
        shared = scope.get("wsmonitor")
        conn = shared.get("connection") if shared else None
        if conn is not None and not conn.adopted:
            # wsmonitor's middleware runs outside: adopt its connection, so each
            # socket is counted once, under this consumer's label.
            conn.adopted = True
            # The consumer's scope is a copy made inside the project's middleware stack: it
            # carries what the stack added (AuthMiddlewareStack's user, the URL route).
            conn.scope = scope
            conn.relabel(label, metrics_on, logs_on, cls._wsm_kind, options)
        else:
            tracer = (tracing.get_tracer() if _switch(self.wsmonitor_tracing, config["TRACING"])
                      else None)
            if not (metrics_on or logs_on or tracer):
                return None
            conn = Connection(scope, label, config, send, metrics_on, logs_on, tracer,
                              cls._wsm_kind, options)
            scope.setdefault("wsmonitor", {})["connection"] = conn
        scope["wsmonitor"]["session_id"] = self.session_id = conn.session_id
        self._wsm = conn
        return conn

    async def dispatch(self, message):
        conn = self._wsm
        kind = message["type"]
        if kind == "websocket.receive" and conn is not None:  # the hot path
            absorb = conn.absorb
            if absorb is not None:
                try:  # free in 3.11 unless it raises
                    if absorb(message):
                        return  # a heartbeat pong: not the application's, not counted
                except Exception as exc:  # a feature never breaks the connection
                    features.absorber_failed(conn, absorb, exc)
            conn.received(message)
            metrics = conn.metrics
            stage = "receive"
            envelope = None
            span = None if conn.tracer is None else self._wsm_receive_span(conn, message)
        elif kind.startswith("websocket."):
            if conn is None:
                return await super().dispatch(message)
            stage = _STAGES.get(kind, "handler")
            if stage == "disconnect":
                conn.disconnected(message.get("code"))
            elif stage == "connect":
                conn.channel_name = getattr(self, "channel_name", None)
                if getattr(self, "channel_layer", None) is not None:
                    conn.layer_alias = self.channel_layer_alias
            metrics = span = None
        else:
            # A channel-layer event: wsmonitor.layers takes its envelope (delivery time,
            # trace context) out of the handlers' way.
            envelope, message = _received_from_layer(message, conn)
            if conn is None:
                return await super().dispatch(message)
            stage = "handler"
            metrics = span = None
            if conn.tracer is not None:
                span = self._wsm_handler_span(conn, stage, message, envelope)
        started = None if metrics is None else _perf_counter()
        token = None if span is None else otel_context.attach(trace.set_span_in_context(span))
        try:
            if stage == "receive" and self._wsm_channels_dispatch:
                # channels' AsyncConsumer.dispatch for a websocket.receive, run in this frame
                # rather than a coroutine of its own (compat.channels_dispatch_inlinable).
                await _channels_consumer.aclose_old_connections()
                return await self.websocket_receive(message)
            return await super().dispatch(message)
        except StopConsumer:
            raise
        except Exception as exc:
            conn.error(stage, exc, span)
            raise
        finally:
            if started is not None:
                elapsed = _perf_counter() - started
                # A sampled message's trace is its exemplar: a slow one in Grafana leads to it.
                metrics.observe_handling(elapsed, span)
            if span is not None:
                otel_context.detach(token)
                span.end()

    def _wsm_receive_span(self, conn, message):
        """The span of one received message: what it needs is worked out once per connection,
        so a span the sampler drops costs the SDK's decision and little else."""
        prepared = self._wsm_receive
        if prepared is None or prepared[0] is not conn or prepared[1] != conn.label:
            prepared = self._wsm_receive = self._wsm_prepare_receive(conn)
        _, _, name, field, context, links, attributes = prepared
        if name is None:
            return None
        if field is not None:
            parent = tracing.message_context(message.get("text"), field)
            if parent is not None:  # the message carries its own trace context
                return conn.tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                              links=conn.links, attributes=attributes)
        return conn.tracer.start_span(name, context=context, kind=SpanKind.SERVER, links=links,
                                      attributes=attributes)

    def _wsm_prepare_receive(self, conn):
        """(conn, label, span name or None when off, traceparent field or None, parent
        context, links, attributes) of this connection's message spans; see
        ``tracing.start_handler_span`` for the models."""
        config = conn.config
        if not config["MESSAGE_SPANS"]:
            return (conn, conn.label, None, None, None, None, None)
        json_consumer = isinstance(self, (AsyncJsonWebsocketConsumer, JsonWebsocketConsumer))
        if config["TRACE_MODEL"] == "message":
            context, links = tracing.ROOT_CONTEXT, conn.links
        else:
            context, links = trace.set_span_in_context(conn.span), ()
        # The SDK copies the attributes it records; a sampler sees them read-only.
        return (conn, conn.label, f"{conn.label} receive",
                config["TRACEPARENT_FIELD"] if json_consumer else None, context, links,
                {"websocket.session.id": conn.session_id})

    def _wsm_handler_span(self, conn, stage, message, envelope=None):
        parent = tracing.envelope_context(envelope)
        if parent is None:
            return None  # only events that carry a trace continue one
        return tracing.start_handler_span(conn.tracer, f"{conn.label} {message['type']}", parent,
                                          conn.span, conn.session_id, SpanKind.CONSUMER, True,
                                          conn.links)

    async def wsmonitor_close(self, event):
        """Close on request: the console, or ``manage.py wsmonitor_sessions close``.

        The event names who asked (recorded as ``closed_by``) and why (logged here, on the
        node that holds the socket; daphne passes no reason to the client).
        """
        from .console.closing import take_request

        request = take_request(event, self._wsm, self.session_id)
        if request is None:
            return
        code, by = request
        if self._wsm is not None:
            await self._wsm.close(code, by=by)
        else:
            await self.close(code=code)


async def _serve(consumer, scope, receive, send):
    """Serve one socket with channels' own ``__call__``, keeping the connection's books."""
    conn = consumer._wsm_open(scope, send)
    if conn is None:
        return await super(InstrumentedMixin, consumer).__call__(scope, receive, send)
    crashed = None
    # An adopted connection's middleware runs in this same task and has entered it already.
    adopted = conn.adopted
    entered = None if adopted else conn.enter()
    try:
        # channels' __call__, its bound method not kept in this frame for the socket's life.
        await super(InstrumentedMixin, consumer).__call__(
            scope, receive, send if adopted else conn.send)
    except asyncio.CancelledError:
        if conn.closed_by is None:
            conn.closed_by = "shutdown"  # daphne cancels without a close frame
        raise
    except BaseException as exc:
        crashed = exc
        # Counted already at its stage, or raised outside any handler:
        # the channel layer's receive.
        conn.error("layer", exc)
        raise
    finally:
        conn.finish(crashed)
        if not adopted:
            conn.leave(entered)


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
        from .console.closing import take_request

        request = take_request(event, self._wsm, self.session_id)
        if request is None:
            return
        code, by = request
        if self._wsm is not None:
            async_to_sync(self._wsm.close)(code, by=by)
        else:
            self.close(code=code)


class InstrumentedWebsocketConsumer(_SyncCloseHandler, InstrumentedMixin, WebsocketConsumer):
    """channels' sync ``WebsocketConsumer`` with wsmonitor's metrics, logs and spans."""


class InstrumentedJsonWebsocketConsumer(_SyncCloseHandler, InstrumentedMixin, JsonWebsocketConsumer):
    """channels' sync ``JsonWebsocketConsumer`` with wsmonitor's metrics, logs and spans."""

    def send_json(self, content, close=False):
        super().send_json(_with_traceparent(self._wsm, content), close=close)
