"""daphne's application_close_timeout kill, counted against daphne's own warning line."""

import asyncio
import json

from websockets.asyncio.client import connect

from .conftest import eventually

APP = "tests.server_kills_app:application"
KILL_WORDS = "took too long to shut down and was killed"
KILLED = "ws_applications_killed_total"


def daphne_kill_lines(server):
    return [line for line in server.log().splitlines()
            if KILL_WORDS in line and '"event": "ws_application_killed"' not in line]


async def open_and_leave(server, path):
    async with connect(server.ws_url(path), open_timeout=5, close_timeout=5) as ws:
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
    return hello.get("session") or hello.get("joined")


async def test_each_kill_daphne_logs_is_counted_once_with_its_session(start_daphne):
    server = start_daphne(app=APP, args=("--application-close-timeout", "1"),
                          env={"DJANGO_SETTINGS_MODULE": "tests.layer_loss_settings"},
                          name="kills")
    sessions = [await open_and_leave(server, "/ws/stalls-on-disconnect/") for _ in range(3)]
    # A consumer whose disconnect() returns at once is not killed.
    await open_and_leave(server, "/ws/loss/quick/")
    await eventually(lambda: len(daphne_kill_lines(server)) == 3, timeout=15,
                     message="daphne's three kill warnings")
    await asyncio.sleep(2.5)  # daphne checks every second: no fourth kill may come
    assert len(daphne_kill_lines(server)) == 3
    snapshot = server.scrape()
    assert snapshot.value(KILLED, consumer="StallsOnDisconnect") == 3
    assert snapshot.value(KILLED) == 3  # none for the quick consumer, none unknown
    assert snapshot.value(KILLED, consumer="<unknown>") == 0
    events = server.events("ws_application_killed")
    assert sorted(event["session_id"] for event in events) == sorted(sessions)
    assert {event["path"] for event in events} == {"/ws/stalls-on-disconnect/"}
    # The killed connections still closed their books, saying what happened.
    assert snapshot.value("ws_connections_active", consumer="StallsOnDisconnect") == 0
    closes = {e["session_id"]: e["closed_by"] for e in server.events("ws_close")}
    assert {closes.get(session_id) for session_id in sessions} == {"killed"}
