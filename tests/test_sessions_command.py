"""`manage.py wsmonitor_sessions list --json` prints one JSON document."""

import asyncio
import functools
import io
import json
import time
import uuid

import pytest
from django.core.management import call_command
from django.test import override_settings

from channels.testing import WebsocketCommunicator

from wsmonitor import registry
from wsmonitor.console import snapshot

from .conftest import stop_registry_task


@pytest.fixture
def two_sessions(redis_url):
    """Two sessions of a made-up node, written the way a serving process writes them."""
    node = f"json-{uuid.uuid4().hex[:6]}"
    key = f"{registry.KEY_PREFIX}{node}:1:{uuid.uuid4().hex[:8]}"
    entries = [{"session_id": str(uuid.uuid4()), "node": node, "pid": 1, "consumer": "Echo",
                "path": f'/ws/{i}/"\n', "opened_at": time.time() - i, "layer": "default",
                "channel": f"specific.x!{i}"} for i in range(2)]
    client = registry._client(redis_url)
    client.hset(key, mapping={e["session_id"]: json.dumps(e) for e in entries})
    client.expire(key, 30)
    try:
        with override_settings(WSMONITOR={"REGISTRY_URL": redis_url}):
            yield node, entries
    finally:
        client.delete(key)
        client.close()


def test_list_json_is_one_document(two_sessions):
    node, entries = two_sessions
    out = io.StringIO()
    call_command("wsmonitor_sessions", "list", "--node", node, "--json", stdout=out)
    document = json.loads(out.getvalue())  # one document, whatever the paths hold
    assert document["count"] == 2
    assert [s["session_id"] for s in document["sessions"]] == [
        e["session_id"] for e in sorted(entries, key=lambda e: e["opened_at"])]


def test_list_json_with_no_session_is_still_a_document(two_sessions):
    out = io.StringIO()
    call_command("wsmonitor_sessions", "list", "--node", "no-such-node", "--json", stdout=out)
    assert json.loads(out.getvalue()) == {"sessions": [], "count": 0}


# --- Who closed it: the command, the console, or an unnamed sender ----------------------------

@pytest.fixture
def shared_layer(redis_url):
    """The registry on, and a Redis channel layer that a close request can travel through."""
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {
        "hosts": [redis_url], "prefix": f"wsmcmd-{uuid.uuid4().hex[:8]}"}}}
    config = {"NODE": f"cmd-{uuid.uuid4().hex[:6]}", "REGISTRY_URL": redis_url,
              "REGISTRY_TTL": 5}
    with override_settings(WSMONITOR=config, CHANNEL_LAYERS=layers):
        yield config["NODE"]


@pytest.fixture
def events():
    """wsmonitor's log events, as dicts, whichever thread logged them."""
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.INFO)
            self.kept = []

        def emit(self, record):
            if isinstance(record.msg, dict):
                self.kept.append(record.msg)

    handler, wsm = Keep(), logging.getLogger("wsmonitor")
    level = wsm.level
    wsm.addHandler(handler)
    wsm.setLevel(logging.INFO)
    try:
        yield lambda name: [e for e in handler.kept if e["event"] == name]
    finally:
        wsm.removeHandler(handler)
        wsm.setLevel(level)


async def open_echo(node):
    from .conftest import eventually
    from .consumers import Echo

    communicator = WebsocketCommunicator(Echo.as_asgi(), "/ws/echo/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_to(text_data="session")
    session_id = (await communicator.receive_from(timeout=3)).split()[0]
    entry = await eventually(lambda: registry.find_session(session_id), timeout=5,
                             message="registered")
    assert entry["node"] == node
    return communicator, entry


async def closed_and_asked(communicator, session_id, events, code=4003):
    """Wait for the close frame, answer it as a client does; the two log events."""
    assert await communicator.receive_output(timeout=3) == {
        "type": "websocket.close", "code": code}
    await communicator.send_input({"type": "websocket.disconnect", "code": code})
    await communicator.wait(timeout=3)
    (close,) = [e for e in events("ws_close") if e["session_id"] == session_id]
    return close, events("ws_close_requested")


def one_request(asked, session_id, code=4003):
    (request,) = asked
    assert request["target_session_id"] == session_id and request["code"] == code
    return request


REASON = "deploy <b>\x1b" + "x" * 500


async def test_the_command_closes_as_itself_with_a_reason(shared_layer, events):
    from wsmonitor.console import closing

    communicator, entry = await open_echo(shared_layer)
    out = io.StringIO()
    try:
        # In a thread of its own, as from another process: it waits for the close.
        waited = asyncio.get_running_loop().run_in_executor(None, functools.partial(
            call_command, "wsmonitor_sessions", "close", entry["session_id"], "--code", "4003",
            "--reason", REASON, stdout=out))
        close, asked = await closed_and_asked(communicator, entry["session_id"], events)
        await asyncio.wait_for(waited, 10)
    finally:
        await asyncio.wait_for(stop_registry_task(), 10)
    assert out.getvalue().startswith(f"Closed {entry['session_id']}")
    assert close["closed_by"] == "command"  # not "console"
    asked = one_request(asked, entry["session_id"])
    assert asked["by"] == "command"
    # The reason reaches the log of the node that holds the socket, bounded and with its
    # control characters escaped; the client receives the code only.
    assert asked["reason"] == ("deploy <b>\\x1b" + "x" * 500)[:closing.MAX_REASON]


def sync_echo():
    from wsmonitor import InstrumentedWebsocketConsumer

    class SyncEcho(InstrumentedWebsocketConsumer):
        def connect(self):
            self.accept()

        def receive(self, text_data=None, bytes_data=None):
            self.send(text_data=self.session_id)

    return SyncEcho


@pytest.mark.parametrize("kind", ["async", "sync"])
@pytest.mark.parametrize("sender, expected", [
    ("console", "console"), ("unnamed", "server"), ("forged", "server")])
@pytest.mark.django_db(transaction=True)
async def test_closed_by_names_who_asked_through_the_layer(events, sender, expected, kind):
    from channels.layers import get_channel_layer

    from wsmonitor.console import closing

    from .consumers import Echo

    consumer = Echo if kind == "async" else sync_echo()
    communicator = WebsocketCommunicator(consumer.as_asgi(), "/ws/echo/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_to(text_data="session")
    session_id = (await communicator.receive_from(timeout=3)).split()[0]
    channel = next(c for c in snapshot.open_connections()
                   if c.session_id == session_id).channel_name
    entry = {"session_id": session_id, "channel": channel, "layer": "default"}
    if sender == "console":
        # What the console sends for a session of another process (route "layer").
        assert await closing._close_remote([entry], 4003, REASON) == 1
    else:
        event = closing.close_event(entry, 4003, "console", REASON)
        if sender == "unnamed":
            del event["by"]  # what an older wsmonitor, or any other sender, sends
        else:
            event["by"] = "<admin>"
        await get_channel_layer().send(channel, event)
    close, asked = await closed_and_asked(communicator, session_id, events)
    assert close["closed_by"] == expected
    assert one_request(asked, session_id)["by"] == expected
