"""The demo project: one time zone in its logs; unreadable chat input answered, not fatal."""

import json
import subprocess
import sys

from .conftest import ROOT

LOCAL_TIME = """
import os, time, logging, json
os.environ["DJANGO_SETTINGS_MODULE"] = "demo_project.settings"
import django
django.setup()
record = logging.makeLogRecord({"msg": "x"})
print(json.dumps({"offset": time.localtime(record.created).tm_gmtoff,
                  "zone": time.strftime("%Z")}))
"""


def test_the_demo_logs_in_one_time_zone():
    # Django applies TIME_ZONE to the whole process (os.environ["TZ"]); anything stamped
    # with local time (asctime, daphne's access log) must agree with wsmonitor's UTC.
    env = {"PATH": "/usr/bin:/bin", "TZ": "America/New_York", "DEMO_DB": ":memory:"}
    out = subprocess.run([sys.executable, "-c", LOCAL_TIME], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out.splitlines()[-1]) == {"offset": 0, "zone": "UTC"}


async def hello(path, exporter):
    from channels.routing import URLRouter
    from channels.testing import WebsocketCommunicator

    from demo_project.routing import websocket_urlpatterns

    communicator = WebsocketCommunicator(URLRouter(websocket_urlpatterns), path)
    assert (await communicator.connect(timeout=3))[0]
    try:
        if "hello=1" not in path:
            assert await communicator.receive_nothing(timeout=0.2)
            return None, []
        first = await communicator.receive_json_from(timeout=3)
    finally:
        await communicator.disconnect()
    spans = [s for s in exporter.get_finished_spans() if s.name == "ws.connection"
             and s.attributes.get("websocket.session.id") == first["session_id"]]
    return first, spans


async def test_the_chat_page_is_told_its_session_and_trace(settings):
    from wsmonitor.testing import span_exporter

    exporter = span_exporter()
    first, spans = await hello("/ws/chat/lobby/?hello=1", exporter)
    assert first["type"] == "session" and len(spans) == 1
    assert first["trace_id"] == format(spans[0].context.trace_id, "032x")
    assert (await hello("/ws/chat/lobby/", exporter))[0] is None  # only when asked

    settings.WSMONITOR = {**settings.WSMONITOR, "TRACING": False}
    first, spans = await hello("/ws/chat/lobby/?hello=1", exporter)
    assert first["trace_id"] is None and len(first["session_id"]) == 36 and spans == []
