"""One WebSocket connection's books, from handshake to close, whoever runs the application.

The consumer mixin and the middleware create a :class:`Connection` and hand the
application its counting :meth:`Connection.send`; the connection counts what goes
in and out, owns the core metrics, logs and the connection span, and calls the
registered features (:mod:`wsmonitor.features`) when it opens and closes. It
knows nothing of consumer classes.
"""

import atexit
import time
import uuid

from structlog.contextvars import bind_contextvars as _bind_contextvars
from structlog.contextvars import unbind_contextvars as _unbind_contextvars
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Status, StatusCode

from . import features as _features
from . import metrics as _metrics
from . import tracing
from .logging import logger

#: ``closed_by`` values: who ended the connection ("killed": the client left, and the server
#: cancelled the application that had not finished in time).
CLOSED_BY = (
    "client", "server", "heartbeat", "console", "command", "shutdown", "error", "killed")
_NO_OPTIONS = {}


def payload_size(message):
    """Bytes of a ``websocket.receive``/``websocket.send`` payload (UTF-8 for text)."""
    text = message.get("text")
    if text is not None:
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    data = message.get("bytes")
    return len(data) if data is not None else 0


#: What ``REDACT_CLIENTS`` puts in logs and the console instead of an address or user name.
REDACTED = "redacted"


def client_address(scope, config):
    """``host:port`` of the peer for logs, ``"redacted"`` under ``REDACT_CLIENTS``; None if unknown."""
    client = scope.get("client")
    if not client:
        return None
    return REDACTED if config["REDACT_CLIENTS"] else f"{client[0]}:{client[1]}"


def _chain(exc):
    """``exc`` and the exceptions it was raised while handling."""
    seen = 0
    while exc is not None and seen < 16:
        yield exc
        exc = exc.__context__
        seen += 1


def _origin(scope):
    """The Origin header as sent (None when absent), at most 200 characters; the log
    renderers escape what it holds."""
    for name, value in scope.get("headers") or ():
        if name == b"origin":
            return bytes(value[:200]).decode("latin-1")
    return None


class Connection:
    """Metrics, logs and the connection span of one socket, from handshake to close.

    Exactly one exists per socket: when wsmonitor's middleware wraps an
    instrumented consumer, the consumer adopts the middleware's connection.

    Readable by features and tools: ``session_id``, ``label``, ``scope``, ``kind``
    ("async", "sync" or "middleware"), ``accepted_at`` (monotonic) and ``opened_at``
    (wall clock), ``code`` (None while open), the ``messages_*`` and ``bytes_*``
    counts, ``subprotocol`` (the accepted one), ``channel_name`` and ``layer_alias``
    (the consumer's channel layer, if any), ``closed_by`` (one of :data:`CLOSED_BY`,
    set on every path out) and ``closable``.
    """

    __slots__ = (
        "scope", "session_id", "label", "kind", "options", "metrics", "logs", "tracer",
        "span", "config", "asgi_send", "accepted_at", "opened_at", "rejected", "code",
        "closed_by", "counted_error", "unrecorded_error", "finished", "adopted", "links",
        "messages_in", "messages_out", "bytes_in", "bytes_out", "channel_name", "layer_alias",
        "absorb", "opened_features", "subprotocol", "_state",
    )

    def __init__(self, scope, label, config, asgi_send, metrics_on, logs_on, tracer,
                 kind="middleware", options=_NO_OPTIONS):
        self.scope = scope
        self.session_id = str(uuid.uuid4())
        self.config = config
        self.asgi_send = asgi_send
        self.tracer = tracer  # None when tracing is off or no provider is installed
        self.span = None  # the ws.connection span
        self.accepted_at = self.opened_at = None
        self.subprotocol = None  # the one the accept chose
        self.rejected = None  # the reject reason, once refused
        self.code = None  # the close code, once a close went out or came in
        self.closed_by = None
        self.counted_error = None  # the exception already counted at its stage
        self.unrecorded_error = None  # (stage, exc) no live span could take
        self.finished = False
        self.adopted = False
        self.channel_name = self.layer_alias = None
        self.absorb = None  # (message) -> bool, from features that swallow messages
        self.opened_features = ()
        self._state = None  # feature name -> that feature's per-connection state, once used
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self.relabel(label, metrics_on, logs_on, kind, options)
        self.links = None
        if tracer is not None:
            self.span = tracing.start_connection_span(tracer, scope, self.session_id, label,
                                                      config["REDACT_CLIENTS"])
            self.links = [Link(self.span.get_span_context())]  # every message span's link
        _open.add(self)

    @property
    def state(self):
        """``{feature name: that feature's per-connection state}``, made on first use."""
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    def relabel(self, label, metrics_on, logs_on, kind=None, options=None):
        """Take the identity of the consumer that adopts this connection."""
        self.label = label
        self.metrics = _metrics.bound(label) if metrics_on else None
        self.logs = logs_on
        if kind is not None:
            self.kind = kind
        if options is not None:
            self.options = options
        if self.span is not None and self.span.is_recording():
            self.span.set_attribute("wsmonitor.consumer", label)

    def enter(self):
        """Bind the session ID for structlog and make the connection span current; returns
        what :meth:`leave` needs (the span's context token, or None).

        structlog's token is not kept: :meth:`leave` unbinds instead of resetting, so an
        open connection holds no token and no tuple (see docs/benchmarks.md). The binding
        lives in the connection's own task; nothing outside it sees the difference.
        """
        _bind_contextvars(session_id=self.session_id)
        if self.span is None:
            return None
        return otel_context.attach(trace.set_span_in_context(self.span))

    @staticmethod
    def leave(span_token):
        if span_token is not None:
            otel_context.detach(span_token)
        _unbind_contextvars("session_id")

    @property
    def closing(self):
        """A close went out or came in."""
        return self.code is not None

    @property
    def closable(self):
        """wsmonitor holds this connection's ASGI send and it is still open."""
        return not self.finished and self.code is None and self.asgi_send is not None

    def add_absorber(self, absorb):
        """``absorb(message)`` sees each ``websocket.receive`` first; True swallows it."""
        previous = self.absorb
        if previous is None:
            self.absorb = absorb
        else:
            self.absorb = lambda message: previous(message) or absorb(message)

    def received(self, message):
        """Count a ``websocket.receive``."""
        size = payload_size(message)
        self.messages_in += 1
        self.bytes_in += size
        if self.metrics is not None:
            self.metrics.observe_size_in(size)  # ws_messages_total is read from its count

    def disconnected(self, code):
        """A ``websocket.disconnect`` arrived: the client (or its network) ended it."""
        if self.code is None:
            if code is None:
                code = 1005  # a close frame without a status code
            elif isinstance(code, int) and type(code) is not int and not isinstance(code, bool):
                code = int(code)  # uvicorn passes websockets' CloseCode (an IntEnum)
            self.code = code
            if self.closed_by is None:
                self.closed_by = "client"

    async def send(self, message):
        """The ASGI ``send`` the application sees: counts what really goes out."""
        try:
            await self.asgi_send(message)
        except Exception as exc:
            self.error("send", exc)
            raise
        kind = message["type"]
        if kind == "websocket.send":  # the hot path
            size = payload_size(message)
            self.messages_out += 1
            self.bytes_out += size
            metrics = self.metrics
            if metrics is not None:
                metrics.observe_size_out(size)
        elif kind == "websocket.accept":
            if self.accepted_at is None and not self.rejected:
                self.accepted(message)
        elif kind == "websocket.close":
            if self.closed_by is None:
                self.closed_by = "server"
            if self.accepted_at is not None:
                if self.code is None:
                    # The code we sent counts, whatever the peer answers; daphne sends 1000
                    # for None.
                    self.code = message.get("code") or 1000
            elif not self.rejected:
                self.reject("denied")

    async def close(self, code=1000, by="server"):
        """Close from the server side through the ASGI send; False if it was closing already.

        Works whatever the consumer kind, from any task on the event loop; the code
        is counted as sent, which is what the client receives.
        """
        if self.finished or self.code is not None:
            return False
        self.closed_by = by
        await self.send({"type": "websocket.close", "code": code})
        return True

    def accepted(self, message):
        self.accepted_at = time.monotonic()
        self.opened_at = time.time()
        _open.discard(self)  # each connection sits in one of the two sets
        _accepted.add(self)
        m = self.metrics
        if m is not None:
            m.connects.inc()
            m.active.inc()
        subprotocol = self.subprotocol = message.get("subprotocol")
        if self.span is not None:
            if subprotocol:
                self.span.set_attribute("websocket.subprotocol", subprotocol)
            if self.config["SPLIT_CONNECTION_SPAN"]:
                self.span.end()
        if self.logs:
            logger.info(
                "ws_open", consumer=self.label, path=self.scope.get("path"),
                client=client_address(self.scope, self.config), subprotocol=subprotocol,
            )
        # The features of this kind, as one tuple shared by every connection of the kind:
        # closed() runs for each, whether or not its opened() raised.
        self.opened_features = opened = _features.for_kind(self.kind)
        for feature in opened:
            self._hook(feature, feature.opened)

    def _hook(self, feature, hook):
        try:
            hook(self)
        except Exception as exc:  # a feature never breaks the connection
            if self.logs:
                logger.error("ws_feature_error", feature=feature.name, hook=hook.__name__,
                             exc_info=exc)

    def reject(self, reason):
        self.rejected = reason
        if self.metrics is not None:
            self.metrics.rejected(reason)
        if self.logs:
            # Who refused and the Origin sent tell a client without an Origin header (most
            # command-line clients), a foreign origin and a consumer's own refusal apart.
            origin = _origin(self.scope)
            by = "application" if self.kind == "middleware" else "consumer"
            extra = {}
            if reason == "denied" and origin is None and by == "application":
                extra["hint"] = ("the client sent no Origin header, which origin validators "
                                 "such as AllowedHostsOriginValidator refuse")
            logger.info("ws_reject", consumer=self.label, path=self.scope.get("path"),
                        reason=reason, by=by, origin=origin,
                        client=client_address(self.scope, self.config), **extra)

    def error(self, stage, exc, span=None):
        """Count an exception once, at the innermost stage that saw it.

        An exception raised while unwinding from one already counted (channels
        cancels the layer's receive task after a handler failed, and a dead
        Redis fails that too) is the same failure: not counted again.
        """
        counted = self.counted_error
        if counted is not None and any(e is counted for e in _chain(exc)):
            return
        self.counted_error = exc
        if self.metrics is not None:
            self.metrics.error(stage)
        span = span or trace.get_current_span()  # the message span, else the connection's
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__} in {stage}"))
        elif self.span is not None:
            self.unrecorded_error = (stage, exc)  # the close span takes it
        if self.logs:
            logger.error("ws_error", stage=stage, exc_info=exc)

    def finish(self, crashed=None, shutdown=False, reject_reason=None):
        """Runs exactly once per connection: on every path out of the application, or at exit."""
        if self.finished:
            return
        self.finished = True
        _open.discard(self)
        _accepted.discard(self)
        if self.accepted_at is None:
            if not self.rejected:
                self.reject(reject_reason or ("error" if crashed else "abandoned"))
            if self.closed_by is None:
                self.closed_by = {"error": "error", "abandoned": "client"}.get(
                    self.rejected, "server")
            if self.span is not None:
                tracing.end_connection_span(self.span, None, self, (), self.rejected)
            return
        code = self.code
        if code is None:
            # daphne answers an application exception with 1011; a cancelled
            # task (shutdown) ends the TCP connection without a close frame.
            code = self.code = 1011 if crashed else 1006
            if self.closed_by is None:
                self.closed_by = "error" if crashed else "shutdown"
        if shutdown:
            self.closed_by = "shutdown"
        elif self.closed_by is None:
            self.closed_by = "error" if crashed else "client"
        for feature in self.opened_features:
            self._hook(feature, feature.closed)
        duration = time.monotonic() - self.accepted_at
        m = self.metrics
        if m is not None:
            m.active.dec()
            m.closed(code)
            m.duration.observe(duration)
        if self.span is not None:
            span = self.span
            if self.config["SPLIT_CONNECTION_SPAN"]:
                span = tracing.start_close_span(self.tracer, span, self.session_id)
            if span.is_recording():
                if shutdown:
                    span.set_attribute("websocket.close.reason", "server_shutdown")
                span.set_attribute("wsmonitor.closed_by", self.closed_by)
                if self.unrecorded_error is not None:
                    stage, exc = self.unrecorded_error
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__} in {stage}"))
            tracing.end_connection_span(span, code, self, self.config["ERROR_CLOSE_CODES"])
        if self.logs:
            extra = {"reason": "server_shutdown"} if shutdown else {}
            logger.info(
                "ws_close", code=code, closed_by=self.closed_by, duration=round(duration, 6),
                messages_in=self.messages_in, messages_out=self.messages_out,
                bytes_in=self.bytes_in, bytes_out=self.bytes_out, **extra,
            )


#: Connections of this process not accepted (nor finished) yet; with ``_accepted``, every
#: unfinished one (for the exit hook).
_open = set()
#: The accepted ones: what :func:`open_connections` returns.
_accepted = set()


def open_connections():
    """The live set of this process's accepted, unfinished connections (read it, don't keep it)."""
    return _accepted


@atexit.register
def _finish_at_exit():
    """Record the end of every connection still open when the process exits.

    On SIGTERM daphne 4.2.3 means to cancel every application task, but its
    kill_all_applications() raises KeyError on an open WebSocket and the loop
    stops with the tasks pending: no finally block runs. What the process
    leaves unrecorded here is lost for good.
    """
    for conn in list(_open) + list(_accepted):
        entered = conn.enter()
        try:
            conn.finish(shutdown=True)
        finally:
            conn.leave(entered)
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush(5000)
