"""The demo plus consumers that misbehave on purpose, for fault tests under a real daphne."""

import gc
import inspect
import os
import signal
import time
import tracemalloc

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

from demo_project.otel import configure_tracing  # noqa: E402

configure_tracing()  # spans only with OTEL_TRACES_EXPORTER set, as in the demo
django_asgi_app = get_asgi_application()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from demo_project.routing import websocket_urlpatterns  # noqa: E402
from wsmonitor import (  # noqa: E402
    InstrumentedAsyncJsonWebsocketConsumer, InstrumentedAsyncWebsocketConsumer,
)


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


class RawJsonEcho(InstrumentedAsyncJsonWebsocketConsumer):
    """A JSON consumer (so wsmonitor looks for a traceparent in each message) that answers
    with the first 100 characters unparsed, whatever the client sent."""

    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        await self.send(text_data=(text_data or "")[:100])


class PlainEcho(AsyncWebsocketConsumer):
    """The uninstrumented baseline."""

    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


def report_wsmonitor_heap(signum, frame):
    """SIGUSR1 (with PYTHONTRACEMALLOC set): append the bytes still held by objects that
    wsmonitor's own code allocated to WSMONITOR_HEAP_FILE. RSS cannot show a per-connection
    leak (arenas stay mapped, one consumer reuses what another freed), and a whole-heap count
    swings by tens of thousands of blocks with the connections daphne still winds down."""
    gc.collect()
    ours = tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(True, "*/wsmonitor/*"),
        # The gone-reader table grows to GONE_READERS_KEPT entries and no further (its own test).
        tracemalloc.Filter(False, "*/wsmonitor/layers.py", GONE_TABLE_LINE),
    ])
    held = sum(stat.size for stat in ours.statistics("filename"))
    with open(WSMONITOR_HEAP_FILE.format(pid=os.getpid()), "a") as out:
        out.write(f"{held}\n")


def _gone_table_line():
    from wsmonitor.layers import _Members

    lines, first = inspect.getsourcelines(_Members._wsm_reader_gone)
    return first + next(n for n, line in enumerate(lines) if "self._wsm_gone[channel] =" in line)


GONE_TABLE_LINE = _gone_table_line()
WSMONITOR_HEAP_FILE = "/tmp/wsmonitor-heap-{pid}.txt"
if tracemalloc.is_tracing():
    signal.signal(signal.SIGUSR1, report_wsmonitor_heap)

application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": URLRouter([
        path("ws/raises/", RaisesEveryMessage.as_asgi()),
        path("ws/blocks/", BlocksTheLoop.as_asgi()),
        path("ws/plain/", PlainEcho.as_asgi()),
        path("ws/raw-json/", RawJsonEcho.as_asgi()),
        *websocket_urlpatterns,
    ]),
})
