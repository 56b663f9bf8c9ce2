"""Consumers that make channel-layer losses happen on purpose, under a real server.

Run with DJANGO_SETTINGS_MODULE=tests.layer_loss_settings. Every reply is JSON.
"""

import asyncio
import json
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.layer_loss_settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from wsmonitor import InstrumentedAsyncWebsocketConsumer  # noqa: E402


class Room(InstrumentedAsyncWebsocketConsumer):
    """A group member that can stall its own handler, re-join, and broadcast."""

    async def connect(self):
        self.group = f"loss-{self.scope['url_route']['kwargs']['room']}"
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.reply(joined=self.session_id)

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        command = json.loads(text_data)
        if "stall" in command:
            await self.reply(stalling=command["stall"])
            # This consumer's handler stalls (the event loop runs on): its layer
            # messages wait in the layer, where they can expire.
            await asyncio.sleep(command["stall"])
            await self.reply(stalled=command["stall"])
        elif "join" in command:  # renews the membership, as a timer below group_expiry would
            await self.channel_layer.group_add(self.group, self.channel_name)
            await self.reply(joined=self.session_id)
        elif "broadcast" in command:
            for n in command["broadcast"]:
                await self.channel_layer.group_send(self.group, {"type": "room.message", "n": n})
            await self.reply(sent=command["broadcast"])

    async def room_message(self, event):
        await self.reply(n=event["n"])

    async def reply(self, **fields):
        await self.send(text_data=json.dumps(fields))


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": URLRouter([
        path("ws/loss/<str:room>/", Room.as_asgi()),
    ]),
})
