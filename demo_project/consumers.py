"""The demo's consumers: plain channels code on wsmonitor's base classes."""

import re

from wsmonitor import InstrumentedAsyncJsonWebsocketConsumer, InstrumentedAsyncWebsocketConsumer

MAX_MESSAGE = 4096


class EchoConsumer(InstrumentedAsyncWebsocketConsumer):
    """Echoes text and binary frames unchanged."""

    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


class ChatConsumer(InstrumentedAsyncJsonWebsocketConsumer):
    """A room chat: every message goes to every member through the channel layer group."""

    async def connect(self):
        room = self.scope["url_route"]["kwargs"]["room"]
        # Group names allow only ASCII alphanumerics, hyphens, underscores and periods.
        self.group = "chat." + re.sub(r"[^A-Za-z0-9_.-]", "_", room)[:80]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        message = content.get("message") if isinstance(content, dict) else None
        if not isinstance(message, str) or len(message) > MAX_MESSAGE:
            await self.send_json({"error": f"send {{\"message\": \"...\"}} of at most {MAX_MESSAGE} characters"})
            return
        await self.channel_layer.group_send(
            self.group, {"type": "chat.message", "message": message, "session_id": self.session_id}
        )

    async def chat_message(self, event):
        await self.send_json({"message": event["message"], "session_id": event["session_id"]})
