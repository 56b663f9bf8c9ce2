"""The loss tests' application plus a consumer whose disconnect() outlives daphne's
application_close_timeout."""

import asyncio
import json

from .layer_loss_app import Room, django_asgi_app  # sets Django up first

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402, I100
from django.urls import path  # noqa: E402

import wsmonitor.server_kills  # noqa: E402, F401  (the counter of daphne's kills)
from wsmonitor import InstrumentedAsyncWebsocketConsumer  # noqa: E402


class StallsOnDisconnect(InstrumentedAsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()
        await self.send(text_data=json.dumps({"session": self.session_id}))

    async def disconnect(self, code):
        await asyncio.sleep(60)


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": URLRouter([
        path("ws/loss/<str:room>/", Room.as_asgi()),
        path("ws/stalls-on-disconnect/", StallsOnDisconnect.as_asgi()),
    ]),
})
