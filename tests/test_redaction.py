"""REDACT_CLIENTS: client addresses and user names stay in the process (logs, spans, console)."""

import json
import logging

import pytest
from asgiref.sync import sync_to_async
from channels.auth import AuthMiddlewareStack
from channels.testing import WebsocketCommunicator
from django.conf import settings

from wsmonitor import WSMonitorMiddleware, server_kills
from wsmonitor.testing import span_exporter

from . import consumers
from .test_console import CONSOLE_SETTINGS, client_for, make_user

ADDRESS = ("10.1.2.3", 5555)
USER = "alice-secret"


@pytest.fixture
def console(settings):
    for key, value in CONSOLE_SETTINGS.items():
        setattr(settings, key, value)
    return settings


def with_client(app):
    """The peer address a real server puts in the scope (the test communicator sets none)."""
    async def application(scope, receive, send):
        return await app({**scope, "client": list(ADDRESS)}, receive, send)
    return application


def logged(caplog):
    return [r.msg for r in caplog.records if isinstance(r.msg, dict)]


async def one_session(console, redact, caplog, alice, viewer):
    """Open, look at in the console, close: what the logs, spans and console kept."""
    console.WSMONITOR = {"NODE": "redaction", "REDACT_CLIENTS": redact, "LOGS": True,
                         "CONSOLE_INTERVAL": 0.5}
    exporter = span_exporter()
    caplog.clear()
    cookie = f"{settings.SESSION_COOKIE_NAME}={alice.cookies[settings.SESSION_COOKIE_NAME].value}"
    app = with_client(WSMonitorMiddleware(AuthMiddlewareStack(consumers.Echo.as_asgi())))
    communicator = WebsocketCommunicator(app, "/ws/echo/", headers=[(b"cookie", cookie.encode())])
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_to(text_data="session")
    session_id = (await communicator.receive_from(timeout=3)).split()[0]
    entry = (await sync_to_async(viewer.get)(f"/console/api/sessions/{session_id}")).json()
    page = (await sync_to_async(viewer.get)(f"/console/sessions/{session_id}/")).content.decode()
    await communicator.disconnect()
    events = [e for e in logged(caplog) if e.get("session_id") == session_id]
    spans = [s for s in exporter.get_finished_spans()
             if s.attributes.get("websocket.session.id") == session_id]
    return entry, page, events, spans


@pytest.mark.django_db(transaction=True)
async def test_redaction_covers_logs_spans_and_the_console(console, caplog):
    caplog.set_level(logging.INFO)
    alice = await sync_to_async(client_for)(await sync_to_async(make_user)(USER, staff=False))
    viewer = await sync_to_async(client_for)(
        await sync_to_async(make_user)("viewer", perms=["view_console"]))
    entry, page, events, spans = await one_session(console, False, caplog, alice, viewer)
    # Without the setting, each place names the peer: the test below can fail.
    opened = next(e for e in events if e["event"] == "ws_open")
    assert opened["client"] == "10.1.2.3:5555"
    (connection,) = [s for s in spans if s.name == "ws.connection"]
    assert connection.attributes["client.address"] == "10.1.2.3"
    assert (entry["client"], entry["user"]) == ("10.1.2.3:5555", USER)

    entry, page, events, spans = await one_session(console, True, caplog, alice, viewer)
    assert {e["event"] for e in events} >= {"ws_open", "ws_close"}
    assert next(e for e in events if e["event"] == "ws_open")["client"] == "redacted"
    (connection,) = [s for s in spans if s.name == "ws.connection"]
    assert "client.address" not in connection.attributes
    assert (entry["client"], entry["user"]) == ("redacted", "redacted")
    kept = json.dumps(events, default=str) + json.dumps(
        [dict(s.attributes) for s in spans] + [e.attributes and dict(e.attributes)
                                               for s in spans for e in s.events],
        default=str) + json.dumps(entry) + page
    assert ADDRESS[0] not in kept and USER not in kept


async def test_a_refused_handshake_is_logged_without_its_peer(settings, caplog):
    caplog.set_level(logging.INFO)
    for redact, shown in ((False, "10.1.2.3:5555"), (True, "redacted")):
        settings.WSMONITOR = {"NODE": "redaction", "LOGS": True, "REDACT_CLIENTS": redact}
        communicator = WebsocketCommunicator(with_client(consumers.Denied.as_asgi()), "/ws/")
        assert not (await communicator.connect(timeout=3))[0]
        rejects = [e for e in logged(caplog) if e["event"] == "ws_reject"]
        assert rejects[-1]["client"] == shown


def test_a_killed_application_is_logged_without_its_peer(settings, caplog):
    caplog.set_level(logging.INFO)
    protocol = "<WebSocketProtocol client=['10.1.2.3', 5555] path=b'/ws/slow/'>"
    settings.WSMONITOR = {"NODE": "redaction", "LOGS": True}
    server_kills.killed(None, protocol)
    settings.WSMONITOR = {"NODE": "redaction", "LOGS": True, "REDACT_CLIENTS": True}
    server_kills.killed(None, protocol)
    shown = [e["connection"] for e in logged(caplog) if e["event"] == "ws_application_killed"]
    assert shown == [protocol, "<WebSocketProtocol client=redacted path=b'/ws/slow/'>"]
