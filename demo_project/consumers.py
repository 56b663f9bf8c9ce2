"""The demo's consumers: plain channels code on wsmonitor's base classes."""

import asyncio
import re
from urllib.parse import parse_qs

from opentelemetry import trace
from prometheus_client import Counter

from wsmonitor import InstrumentedAsyncJsonWebsocketConsumer, InstrumentedAsyncWebsocketConsumer

MAX_MESSAGE = 4096

# The demo's own counter, not wsmonitor's ws_errors_total: that one counts exceptions in
# application code (bugs, worth an alert), while a client sending something the protocol
# does not allow is answered and handled as designed.
REFUSED = Counter("demo_messages_refused_total",
                  "Client messages the demo answered with an error, by consumer and reason.",
                  ["consumer", "reason"])


class JsonProtocol(InstrumentedAsyncJsonWebsocketConsumer):
    """A JSON consumer that answers frames it cannot read with {"type": "error", "error": ...}
    instead of raising (which daphne answers with 1011, closing the socket)."""

    usage = "send JSON"

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if text_data is None:
            await self.refuse("binary")
            return
        try:
            content = await self.decode_json(text_data)
        except (ValueError, RecursionError):  # deep nesting raises the latter
            await self.refuse("not_json")
            return
        await self.receive_json(content, **kwargs)

    async def refuse(self, reason):
        REFUSED.labels(type(self).__name__, reason).inc()
        await self.send_json({"type": "error", "error": self.usage, "reason": reason})


class EchoConsumer(InstrumentedAsyncWebsocketConsumer):
    """Echoes text and binary frames unchanged."""

    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


def connection_trace_id():
    """The trace ID of the connection span (current in connect()); None when tracing is off."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class ChatConsumer(JsonProtocol):
    """A room chat: every message goes to every member through the channel layer group."""

    usage = f'send {{"message": "..."}} of at most {MAX_MESSAGE} characters'

    wsmonitor_heartbeat = True  # WSMONITOR["HEARTBEAT_INTERVAL"]; wsmonitor.js answers

    async def connect(self):
        room = self.scope["url_route"]["kwargs"]["room"]
        # Group names allow only ASCII alphanumerics, hyphens, underscores and periods.
        self.group = "chat." + re.sub(r"[^A-Za-z0-9_.-]", "_", room)[:80]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        # The chat page asks (?hello=1) to be told its session ID and trace ID.
        if parse_qs(self.scope.get("query_string", b"").decode("latin-1")).get("hello") == ["1"]:
            await self.send_json({"type": "session", "session_id": self.session_id,
                                  "trace_id": connection_trace_id()})

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        message = content.get("message") if isinstance(content, dict) else None
        if not isinstance(message, str) or len(message) > MAX_MESSAGE:
            await self.refuse("invalid")
            return
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "message": message, "session_id": self.session_id}
        )

    async def chat_message(self, event):
        await self.send_json({"message": event["message"], "session_id": event["session_id"]})


WORDS = ("the answer streams in chunks so the first words arrive long before the last one "
         "and every chunk is measured").split()


class StreamConsumer(JsonProtocol):
    """A simulated streamed answer: send {"prompt": "...", "chunks": 20, "delay": 0.05, "size": 0}.

    Replies {"type": "chunk", "index": i, "text": "..."} per chunk (``size`` pads each to that
    many characters), then {"type": "done", "chunks": n}. The answer runs in a task, so the
    consumer keeps dispatching (heartbeat pongs included) while it streams.
    """

    usage = 'send {"prompt": "...", "chunks": 20, "delay": 0.05, "size": 0}'
    wsmonitor_heartbeat = True
    wsmonitor_streams = ("answer",)
    answering = None

    async def connect(self):
        await self.accept()

    async def disconnect(self, code):
        if self.answering is not None:
            self.answering.cancel()

    async def receive_json(self, content, **kwargs):
        if self.answering is not None and not self.answering.done():
            await self.send_json({"type": "error", "error": "still answering"})
            return
        try:
            prompt = str(content.get("prompt", ""))[:200]
            chunks = min(max(int(content.get("chunks", 20)), 1), 10000)
            delay = min(max(float(content.get("delay", 0.05)), 0.0), 2.0)
            size = min(max(int(content.get("size", 0)), 0), 65536)
        except (AttributeError, TypeError, ValueError, OverflowError):
            await self.refuse("invalid")
            return
        self.answering = asyncio.create_task(self.answer(prompt, chunks, delay, size))

    async def answer(self, prompt, chunks, delay, size):
        words = prompt.split() + list(WORDS)
        async with self.stream("answer") as stream:
            await asyncio.sleep(delay * 4)  # "thinking" before the first chunk
            for index in range(chunks):
                if index:
                    await asyncio.sleep(delay)  # 0 still yields: pings interleave
                text = words[index % len(words)] + " "
                await stream.send({"type": "chunk", "index": index, "text": text.ljust(size)})
        await self.send_json({"type": "done", "chunks": chunks})
