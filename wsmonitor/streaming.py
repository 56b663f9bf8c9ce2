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

from . import metrics as _metrics

try:  # opentelemetry-api is optional
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover
    _trace = None

#: Label of stream names a consumer did not declare in ``wsmonitor_streams``.
OTHER = "other"


class Stream:
    """One stream of chunks; use through ``consumer.stream(name)``."""

    __slots__ = ("consumer", "name", "metrics", "span", "started", "last", "chunks",
                 "first_chunk", "max_interval")

    def __init__(self, consumer, name, metrics):
        self.consumer, self.name, self.metrics = consumer, name, metrics
        self.span = None
        self.started = self.last = self.first_chunk = None
        self.chunks = 0
        self.max_interval = 0.0

    async def __aenter__(self):
        if _trace is not None:
            span = _trace.get_current_span()
            if span.is_recording():
                self.span = span
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
        if span is not None and span.is_recording():
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
        return False


class StreamingMixin:
    """``self.stream(name)`` on instrumented consumers."""

    #: Stream names exported as themselves in the ``stream`` label; others fold to "other".
    wsmonitor_streams = ()

    def stream(self, name):
        """An async context manager measuring one stream of chunks sent to this client."""
        label = name if name in self.wsmonitor_streams else OTHER
        conn = self._wsm
        metrics = None
        if conn is not None and conn.metrics is not None:
            consumer = self.wsmonitor_label or type(self).__name__
            metrics = _metrics.bound_stream(consumer, label)
        return Stream(self, name, metrics)
