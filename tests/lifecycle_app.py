"""The demo plus consumers for lifecycle tests, served by a real server.

``TESTS_WSMONITOR`` (JSON) is merged into the demo's ``WSMONITOR`` before Django starts, and
``OTEL_TRACES_EXPORTER=console`` prints the spans, as in the demo.
"""

import json
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

from django.conf import settings  # noqa: E402

from demo_project.otel import configure_tracing  # noqa: E402

if os.environ.get("TESTS_WSMONITOR"):
    settings.WSMONITOR = {**settings.WSMONITOR, **json.loads(os.environ["TESTS_WSMONITOR"])}
configure_tracing()
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from demo_project.routing import websocket_urlpatterns  # noqa: E402
from wsmonitor import (  # noqa: E402
    InstrumentedAsyncWebsocketConsumer, InstrumentedWebsocketConsumer, WSMonitorMiddleware,
)


class SyncBeat(InstrumentedWebsocketConsumer):
    """A sync consumer with the heartbeat required: a client that never answers is a zombie."""

    wsmonitor_heartbeat = True
    wsmonitor_heartbeat_required = True

    def connect(self):
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=text_data, bytes_data=bytes_data)


class DisconnectRaises(InstrumentedAsyncWebsocketConsumer):
    """Echoes; its disconnect() fails."""

    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)

    async def disconnect(self, code):
        raise RuntimeError("disconnect failed")


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": WSMonitorMiddleware(URLRouter([
        path("ws/sync-beat/", SyncBeat.as_asgi()),
        path("ws/disconnect-raises/", DisconnectRaises.as_asgi()),
        *websocket_urlpatterns,
    ])),
})
