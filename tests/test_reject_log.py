"""ws_reject tells a missing Origin, a foreign Origin and a consumer's own refusal apart."""

import json
import logging

import pytest
from channels.routing import URLRouter
from channels.security.websocket import OriginValidator
from channels.testing import WebsocketCommunicator
from django.urls import path

from wsmonitor import WSMonitorMiddleware
from wsmonitor.logging import _Handler

from . import consumers

ALLOWED = "http://good.example"


def app():
    return WSMonitorMiddleware(OriginValidator(URLRouter([
        path("ws/echo/", consumers.Echo.as_asgi()),
        path("ws/denied/", consumers.Denied.as_asgi()),
    ]), [ALLOWED]))


async def rejection(caplog, path, origin=None):
    caplog.set_level(logging.INFO)
    caplog.clear()
    headers = [(b"origin", origin)] if origin is not None else []
    communicator = WebsocketCommunicator(app(), path, headers=headers)
    connected, _ = await communicator.connect(timeout=3)
    assert not connected
    (reject,) = [r.msg for r in caplog.records
                 if isinstance(r.msg, dict) and r.msg["event"] == "ws_reject"]
    return reject


async def test_no_origin_header_is_named_with_a_hint(caplog):
    reject = await rejection(caplog, "/ws/echo/")
    assert reject["reason"] == "denied" and reject["by"] == "application"
    assert reject["origin"] is None and "no Origin header" in reject["hint"]
    assert reject["consumer"] == "websocket"


async def test_a_foreign_origin_is_logged_as_sent(caplog):
    reject = await rejection(caplog, "/ws/echo/", b"http://evil.example")
    assert (reject["by"], reject["origin"]) == ("application", "http://evil.example")
    assert "hint" not in reject


async def test_a_consumer_refusing_in_connect_is_told_apart(caplog):
    reject = await rejection(caplog, "/ws/denied/", ALLOWED.encode())
    assert (reject["by"], reject["origin"], reject["consumer"]) == ("consumer", ALLOWED, "Denied")
    assert "hint" not in reject


@pytest.mark.parametrize("origin", [b"http://x/\n{\"event\": \"forged\"}", b"\xff\x00" * 300])
async def test_a_hostile_origin_stays_inside_one_bounded_json_line(caplog, origin):
    reject = await rejection(caplog, "/ws/echo/", origin)
    assert len(reject["origin"]) <= 200
    record = next(r for r in caplog.records if isinstance(r.msg, dict)
                  and r.msg["event"] == "ws_reject")
    handler = _Handler()
    line = handler.format(record)
    assert "\n" not in line and json.loads(line)["origin"] == reject["origin"]
