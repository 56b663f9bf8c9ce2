"""Streaming metrics: time to first chunk, chunk intervals, chunk count and duration.

    class AnswerConsumer(InstrumentedAsyncJsonWebsocketConsumer):
        wsmonitor_streams = ("answer",)

        async def receive_json(self, content):
            async with self.stream("answer") as s:
                async for token in generate(content):
                    await s.send({"token": token})
"""

import asyncio
import time

from django.core.exceptions import ImproperlyConfigured
from prometheus_client import Counter, Histogram
from opentelemetry import trace as _trace
from opentelemetry.trace import Link

from . import features
from . import metrics as _metrics

#: Label of stream names a consumer did not declare in ``wsmonitor_streams``.
OTHER = "other"
LABELS = _metrics.LABELS + ("stream",)

STREAM_FIRST_CHUNK = Histogram(
    "ws_stream_first_chunk_seconds", "Time from the start of a stream to its first chunk.",
    LABELS, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STREAM_CHUNK_INTERVAL = Histogram(
    "ws_stream_chunk_interval_seconds", "Time between consecutive chunks of a stream.",
    LABELS, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STREAM_CHUNKS = Histogram(
    "ws_stream_chunks", "Chunks sent by one stream.",
    LABELS, buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
)
STREAM_DURATION = Histogram(
    "ws_stream_duration_seconds", "Lifetime of a stream, start to end.",
    LABELS, buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
STREAMS = Counter(
    "ws_streams", "Streams ended, by outcome (ok, error: the block raised, cancelled).",
    LABELS + ("outcome",),
)
STREAM_OUTCOMES = ("ok", "error", "cancelled")


class BoundStream:
    """The stream children of one (consumer, stream name) pair."""

    __slots__ = ("first_chunk", "interval", "chunks", "duration", "outcomes")

    def __init__(self, consumer, node, stream):
        labels = (consumer, node, stream)
        self.first_chunk = STREAM_FIRST_CHUNK.labels(*labels)
        self.interval = STREAM_CHUNK_INTERVAL.labels(*labels)
        self.chunks = STREAM_CHUNKS.labels(*labels)
        self.duration = STREAM_DURATION.labels(*labels)
        self.outcomes = {outcome: STREAMS.labels(*labels, outcome) for outcome in STREAM_OUTCOMES}


_bound = _metrics.cache()


def bound_stream(consumer, node, stream):
    try:
        return _bound[consumer, node, stream]
    except KeyError:
        _bound[consumer, node, stream] = result = BoundStream(consumer, node, stream)
        return result


class Stream:
    """One stream of chunks; use through ``consumer.stream(name)``."""

    __slots__ = ("consumer", "conn", "name", "metrics", "span", "started", "started_ns",
                 "last", "chunks", "first_chunk", "max_interval")

    def __init__(self, consumer, name, metrics, conn=None):
        self.consumer, self.name, self.metrics, self.conn = consumer, name, metrics, conn
        self.span = None
        self.started = self.last = self.first_chunk = None
        self.chunks = 0
        self.max_interval = 0.0

    async def __aenter__(self):
        span = _trace.get_current_span()  # ended already if this runs in a task of a handler
        if span.get_span_context().is_valid:
            self.span = span
        self.started_ns = time.time_ns()
        self.started = time.perf_counter()
        return self

    async def send(self, chunk=None, *, text_data=None, bytes_data=None):
        """Send one chunk: ``str`` as text, ``bytes`` as binary, anything else with ``send_json``."""
        self.mark()
        if text_data is not None or bytes_data is not None:
            await self.consumer.send(text_data=text_data, bytes_data=bytes_data)
        elif isinstance(chunk, str):
            await self.consumer.send(text_data=chunk)
        elif isinstance(chunk, (bytes, bytearray)):
            await self.consumer.send(bytes_data=chunk)
        else:
            await self.consumer.send_json(chunk)

    def mark(self):
        """Record one chunk sent some other way."""
        now = time.perf_counter()
        m = self.metrics
        if self.last is None:
            self.first_chunk = now - self.started
            if m is not None:
                m.first_chunk.observe(self.first_chunk)
        else:
            interval = now - self.last
            self.max_interval = max(self.max_interval, interval)
            if m is not None:
                m.interval.observe(interval)
        self.last = now
        self.chunks += 1

    async def __aexit__(self, exc_type, exc, tb):
        duration = time.perf_counter() - self.started
        if exc_type is None:
            outcome = "ok"
        else:
            outcome = "cancelled" if issubclass(exc_type, asyncio.CancelledError) else "error"
        m = self.metrics
        if m is not None:
            m.chunks.observe(self.chunks)
            m.duration.observe(duration)
            m.outcomes[outcome].inc()
        span = self.span
        own = span is None or not span.is_recording()
        if own:
            # Run in a task, the stream outlives the message span it started under:
            # a span of its own in the session's trace keeps its attributes.
            span = self._own_span()
        if span is not None:
            attributes = {
                "wsmonitor.stream.name": self.name,
                "wsmonitor.stream.outcome": outcome,
                "wsmonitor.stream.chunks": self.chunks,
                "wsmonitor.stream.duration": duration,
            }
            if self.first_chunk is not None:
                attributes["wsmonitor.stream.time_to_first_chunk"] = self.first_chunk
            if self.chunks > 1:
                attributes["wsmonitor.stream.chunk_interval.mean"] = (
                    (self.last - self.started - self.first_chunk) / (self.chunks - 1))
                attributes["wsmonitor.stream.chunk_interval.max"] = self.max_interval
            span.set_attributes(attributes)
            if own:
                span.end()
        return False

    def _own_span(self):
        conn = self.conn
        if conn is None or conn.tracer is None or conn.span is None:
            return None
        parent = self.span if self.span is not None else conn.span
        context = parent.get_span_context()
        if not context.is_valid:
            return None
        span = conn.tracer.start_span(
            f"{conn.label} stream", context=_trace.set_span_in_context(parent),
            kind=_trace.SpanKind.INTERNAL, start_time=self.started_ns,
            links=[Link(conn.span.get_span_context())],
            attributes={"websocket.session.id": conn.session_id})
        return span if span.is_recording() else None


class StreamingMixin:
    """``self.stream(name)`` on instrumented async consumers."""

    #: Stream names exported as themselves in the ``stream`` label; others fold to "other".
    wsmonitor_streams = ()

    def stream(self, name):
        """An async context manager measuring one stream of chunks sent to this client."""
        if getattr(self, "_sync", False):
            raise TypeError("self.stream() is an async context manager: it needs an async "
                            "consumer (InstrumentedAsyncWebsocketConsumer or its JSON twin).")
        conn = self._wsm
        metrics = None
        if conn is not None and conn.metrics is not None:
            declared = conn.options.get("streaming", ())
            label = name if name in declared else OTHER
            metrics = bound_stream(conn.metrics.consumer, conn.metrics.node, label)
        return Stream(self, name, metrics, conn)


class StreamingFeature(features.Feature):
    """Validates ``wsmonitor_streams``; the streams themselves live in ``self.stream()``."""

    name = "streaming"
    kinds = frozenset({"async"})
    unsupported_hint = ("self.stream() is an async context manager: derive the consumer from "
                        "InstrumentedAsyncWebsocketConsumer (or its JSON twin), or drop "
                        "wsmonitor_streams.")

    def options(self, cls):
        names = getattr(cls, "wsmonitor_streams", ())
        if not names:
            return None
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise ImproperlyConfigured(
                f"{cls.__module__}.{cls.__qualname__}.wsmonitor_streams must be a tuple of "
                f'stream names such as ("answer",), not {names!r}.')
        return frozenset(names)


features.register(StreamingFeature())
