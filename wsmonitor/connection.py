"""One WebSocket connection's books, kept the same way by the consumer mixin and the middleware."""

import atexit
import time
import uuid

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Status, StatusCode

from . import metrics as _metrics
from . import tracing
from .logging import logger

UNSET = object()


def payload_size(message):
    """Bytes of a ``websocket.receive``/``websocket.send`` payload (UTF-8 for text)."""
    text = message.get("text")
    if text is not None:
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    data = message.get("bytes")
    return len(data) if data is not None else 0


class Connection:
    """Metrics, logs and the connection span of one socket, from handshake to close.

    Exactly one exists per socket: when wsmonitor's middleware wraps an
    instrumented consumer, the consumer adopts the middleware's connection.
    """

    __slots__ = (
        "scope", "session_id", "label", "metrics", "logs", "tracer", "span", "config",
        "asgi_send", "accepted_at", "rejected", "code", "counted_error", "finished", "adopted",
        "owner", "links", "messages_in", "messages_out", "bytes_in", "bytes_out",
    )

    def __init__(self, scope, label, config, asgi_send, metrics_on, logs_on, tracer):
        self.scope = scope
        self.session_id = str(uuid.uuid4())
        self.config = config
        self.asgi_send = asgi_send
        self.tracer = tracer  # None when tracing is off or no provider is installed
        self.span = None  # the ws.connection span
        self.accepted_at = None
        self.rejected = None  # the reject reason, once refused
        self.code = UNSET
        self.counted_error = None  # the exception already counted at its stage
        self.finished = False
        self.adopted = False
        self.owner = None  # the instrumented consumer that runs this connection, if any
        self.messages_in = self.messages_out = self.bytes_in = self.bytes_out = 0
        self.relabel(label, metrics_on, logs_on)
        self.links = None
        if tracer is not None:
            self.span = tracing.start_connection_span(tracer, scope, self.session_id, label)
            self.links = [Link(self.span.get_span_context())]  # every message span's link
        _unfinished.add(self)

    def relabel(self, label, metrics_on, logs_on):
        self.label = label
        self.metrics = _metrics.bound(label) if metrics_on else None
        self.logs = logs_on
        if self.span is not None and self.span.is_recording():
            self.span.set_attribute("wsmonitor.consumer", label)

    def enter(self):
        """Bind the session ID for structlog and make the connection span current.

        Plain tokens rather than context managers: what is held for a
        connection's whole life is kept small (see docs/benchmarks.md).
        """
        tokens = structlog.contextvars.bind_contextvars(session_id=self.session_id)
        if self.span is None:
            return tokens, None
        return tokens, otel_context.attach(trace.set_span_in_context(self.span))

    @staticmethod
    def leave(entered):
        tokens, span_token = entered
        if span_token is not None:
            otel_context.detach(span_token)
        structlog.contextvars.reset_contextvars(**tokens)

    @property
    def closing(self):
        return self.code is not UNSET

    def received(self, message):
        """Count a ``websocket.receive``."""
        size = payload_size(message)
        self.messages_in += 1
        self.bytes_in += size
        if self.metrics is not None:
            self.metrics.observe_size_in(size)  # ws_messages_total is read from its count

    def disconnected(self, code):
        if self.code is UNSET:
            if isinstance(code, int) and type(code) is not int and not isinstance(code, bool):
                code = int(code)  # uvicorn passes websockets' CloseCode (an IntEnum)
            self.code = code

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
            if self.metrics is not None:
                self.metrics.observe_size_out(size)
        elif kind == "websocket.accept":
            if self.accepted_at is None and not self.rejected:
                self.accepted(message)
        elif kind == "websocket.close":
            if self.accepted_at is not None:
                # The code we sent counts, whatever the peer answers; daphne sends 1000 for None.
                self.disconnected(message.get("code") or 1000)
            elif not self.rejected:
                self.reject("denied")

    def accepted(self, message):
        self.accepted_at = time.monotonic()
        m = self.metrics
        if m is not None:
            m.connects.inc()
            m.active.inc()
        subprotocol = message.get("subprotocol")
        if self.span is not None:
            if subprotocol:
                self.span.set_attribute("websocket.subprotocol", subprotocol)
            if self.config["SPLIT_CONNECTION_SPAN"]:
                self.span.end()
        if self.logs:
            client = self.scope.get("client")
            logger.info(
                "ws_open", consumer=self.label, path=self.scope.get("path"),
                client=f"{client[0]}:{client[1]}" if client else None, subprotocol=subprotocol,
            )
        if self.owner is not None:
            self.owner._wsm_opened()

    def reject(self, reason):
        self.rejected = reason
        if self.metrics is not None:
            self.metrics.rejected(reason)
        if self.logs:
            logger.info("ws_reject", consumer=self.label, path=self.scope.get("path"),
                        reason=reason)

    def error(self, stage, exc, span=None):
        """Count an exception once, at the innermost stage that saw it."""
        if exc is self.counted_error:
            return
        self.counted_error = exc
        if self.metrics is not None:
            self.metrics.error(stage)
        span = span or trace.get_current_span()  # the message span, else the connection's
        if span.is_recording():
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__} in {stage}"))
        if self.logs:
            logger.error("ws_error", stage=stage, exc_info=exc)

    def finish(self, crashed=None, shutdown=False, reject_reason=None):
        """Runs exactly once per connection: on every path out of the application, or at exit."""
        if self.finished:
            return
        self.finished = True
        _unfinished.discard(self)
        if self.owner is not None:
            self.owner._wsm_closed()
        if self.accepted_at is None:
            if not self.rejected:
                self.reject(reject_reason or ("error" if crashed else "abandoned"))
            if self.span is not None:
                tracing.end_connection_span(self.span, None, self, (), self.rejected)
            return
        code = self.code
        if code is UNSET:
            # daphne answers an application exception with 1011; a cancelled
            # task (shutdown) ends the TCP connection without a close frame.
            code = 1011 if crashed else 1006
        elif code is None:
            code = 1005  # a close frame without a status code
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
            if shutdown and span.is_recording():
                span.set_attribute("websocket.close.reason", "server_shutdown")
            tracing.end_connection_span(span, code, self, self.config["ERROR_CLOSE_CODES"])
        if self.logs:
            extra = {"reason": "server_shutdown"} if shutdown else {}
            logger.info(
                "ws_close", code=code, duration=round(duration, 6),
                messages_in=self.messages_in, messages_out=self.messages_out,
                bytes_in=self.bytes_in, bytes_out=self.bytes_out, **extra,
            )


#: Connections not finished yet, for :func:`_finish_at_exit`.
_unfinished = set()


@atexit.register
def _finish_at_exit():
    """Record the end of every connection still open when the process exits.

    On SIGTERM daphne 4.2.3 means to cancel every application task, but its
    kill_all_applications() raises KeyError on an open WebSocket and the loop
    stops with the tasks pending: no finally block runs. What the process
    leaves unrecorded here is lost for good.
    """
    for conn in list(_unfinished):
        entered = conn.enter()
        try:
            conn.finish(shutdown=True)
        finally:
            conn.leave(entered)
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if flush is not None:
        flush(5000)
