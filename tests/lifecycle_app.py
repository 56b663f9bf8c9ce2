"""The demo plus a sync consumer with the heartbeat, served by a real server in lifecycle tests."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from demo_project.routing import websocket_urlpatterns  # noqa: E402
from wsmonitor import InstrumentedWebsocketConsumer, WSMonitorMiddleware  # noqa: E402


class SyncBeat(InstrumentedWebsocketConsumer):
    """A sync consumer with the heartbeat required: a client that never answers is a zombie."""

    wsmonitor_heartbeat = True
    wsmonitor_heartbeat_required = True

    def connect(self):
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        self.send(text_data=text_data, bytes_data=bytes_data)


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": WSMonitorMiddleware(URLRouter([
        path("ws/sync-beat/", SyncBeat.as_asgi()),
        *websocket_urlpatterns,
    ])),
})
