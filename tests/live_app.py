"""The demo plus consumers that misbehave on purpose, for fault tests under a real daphne."""

import os
import time

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
django_asgi_app = get_asgi_application()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from demo_project.routing import websocket_urlpatterns  # noqa: E402
from wsmonitor import InstrumentedAsyncWebsocketConsumer  # noqa: E402


class RaisesEveryMessage(InstrumentedAsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        raise RuntimeError("this handler always fails")


class BlocksTheLoop(InstrumentedAsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        time.sleep(1.0)  # a synchronous call inside an async handler: the whole loop stalls
        await self.send(text_data=text_data)


class PlainEcho(AsyncWebsocketConsumer):
    """The uninstrumented baseline."""

    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": URLRouter([
        path("ws/raises/", RaisesEveryMessage.as_asgi()),
        path("ws/blocks/", BlocksTheLoop.as_asgi()),
        path("ws/plain/", PlainEcho.as_asgi()),
        *websocket_urlpatterns,
    ]),
})
