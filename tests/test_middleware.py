"""WSMonitorMiddleware: consumers wsmonitor does not own, and handshakes that never reach one."""

import asyncio

import pytest
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import URLRouter
from channels.security.websocket import AllowedHostsOriginValidator
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from django.urls import path

from wsmonitor import WSMonitorMiddleware
from wsmonitor.testing import MetricsSnapshot, assert_metric_diff, span_exporter

from . import consumers


class ThirdParty(AsyncWebsocketConsumer):
    """A consumer its user cannot re-parent (a library's)."""

    async def connect(self):
        await self.accept(subprotocol="graphql-ws")

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "boom":
            raise RuntimeError("library bug")
        await self.send(text_data=text_data)


class BrokenMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        raise KeyError("session middleware failed")


def router():
    return URLRouter([
        path("ws/third/", ThirdParty.as_asgi()),
        path("ws/echo/", consumers.Echo.as_asgi()),
    ])


LABEL = {"consumer": "graphql"}


async def run(app, path="/ws/third/", messages=("a", "b"), close=1000, headers=None):
    communicator = WebsocketCommunicator(app, path, headers=headers or [],
                                         subprotocols=["graphql-ws"])
    connected, _ = await communicator.connect(timeout=3)
    assert connected
    for message in messages:
        await communicator.send_to(text_data=message)
        assert await communicator.receive_from(timeout=3) == message
    await communicator.disconnect(code=close, timeout=3)


async def test_a_third_party_consumer_gets_the_books():
    before = MetricsSnapshot.collect()
    await run(WSMonitorMiddleware(router(), label="graphql"), close=1001)
    assert_metric_diff(before, "ws_connects_total", 1, **LABEL)
    assert_metric_diff(before, "ws_connections_active", 0, **LABEL)
    assert_metric_diff(before, "ws_closes_total", 1, code="1001", **LABEL)
    assert_metric_diff(before, "ws_messages_total", 2, direction="in", **LABEL)
    assert_metric_diff(before, "ws_messages_total", 2, direction="out", **LABEL)
    assert_metric_diff(before, "ws_message_size_bytes_count", 2, direction="in", **LABEL)


async def test_exception_after_accept_and_abrupt_drop():
    before = MetricsSnapshot.collect()
    app = WSMonitorMiddleware(router(), label="graphql")
    communicator = WebsocketCommunicator(app, "/ws/third/")
    await communicator.connect(timeout=3)
    await communicator.send_to(text_data="boom")
    with pytest.raises(RuntimeError, match="library bug"):
        await communicator.wait(timeout=3)
    await run(app, messages=(), close=1006)
    assert_metric_diff(before, "ws_errors_total", 1, stage="application", **LABEL)
    assert_metric_diff(before, "ws_closes_total", 1, code="1011", **LABEL)
    assert_metric_diff(before, "ws_closes_total", 1, code="1006", **LABEL)
    assert_metric_diff(before, "ws_connections_active", 0, **LABEL)


async def test_handshakes_that_never_reach_a_consumer():
    before = MetricsSnapshot.collect()
    app = WSMonitorMiddleware(AllowedHostsOriginValidator(router()))
    # No route: channels' URLRouter raises.
    communicator = WebsocketCommunicator(app, "/ws/nowhere/",
                                         headers=[(b"origin", b"http://testserver")])
    await communicator.send_input({"type": "websocket.connect"})
    with pytest.raises(ValueError, match="No route found"):
        await communicator.wait(timeout=3)
    # Origin refused: AllowedHostsOriginValidator's denier closes before accepting.
    with override_settings(ALLOWED_HOSTS=["allowed.example"]):  # read when the app is built
        refusing = WSMonitorMiddleware(AllowedHostsOriginValidator(router()))
        communicator = WebsocketCommunicator(refusing, "/ws/third/",
                                             headers=[(b"origin", b"http://evil.example")])
        assert not (await communicator.connect(timeout=3))[0]
        await communicator.disconnect(timeout=3)
    # An exception in middleware before any consumer.
    communicator = WebsocketCommunicator(WSMonitorMiddleware(BrokenMiddleware(router())), "/ws/")
    await communicator.send_input({"type": "websocket.connect"})
    with pytest.raises(KeyError):
        await communicator.wait(timeout=3)
    labels = {"consumer": "websocket"}
    assert_metric_diff(before, "ws_connects_rejected_total", 1, reason="no_route", **labels)
    assert_metric_diff(before, "ws_connects_rejected_total", 1, reason="denied", **labels)
    assert_metric_diff(before, "ws_connects_rejected_total", 1, reason="error", **labels)
    assert_metric_diff(before, "ws_errors_total", 1, stage="connect", **labels)
    assert_metric_diff(before, "ws_errors_total", 1, **labels)  # no_route is no app error
    assert_metric_diff(before, "ws_connects_total", 0, **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)


async def test_an_instrumented_consumer_inside_counts_once_under_its_own_label():
    exporter = span_exporter()
    before = MetricsSnapshot.collect()
    app = WSMonitorMiddleware(router())
    communicator = WebsocketCommunicator(app, "/ws/echo/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_to(text_data="session")
    own, in_scope = (await communicator.receive_from(timeout=3)).split()
    assert own == in_scope
    await communicator.send_to(text_data="boom")
    with pytest.raises(RuntimeError):
        await communicator.wait(timeout=3)
    after = MetricsSnapshot.collect()
    for name, delta in (("ws_connects_total", 1), ("ws_closes_total", 1),
                        ("ws_messages_total", 3), ("ws_errors_total", 1)):
        assert_metric_diff(before, name, delta, after=after, consumer="Echo")
        assert_metric_diff(before, name, 0, after=after, consumer="websocket")
    assert_metric_diff(before, "ws_closes_total", 1, after=after, consumer="Echo", code="1011")
    assert_metric_diff(before, "ws_message_handling_seconds_count", 2, after=after,
                       consumer="Echo")
    spans = exporter.get_finished_spans()
    (connection,) = [s for s in spans if s.name == "ws.connection"]
    assert connection.attributes["wsmonitor.consumer"] == "Echo"
    assert connection.attributes["websocket.session.id"] == own
    assert connection.attributes["websocket.close.code"] == 1011


async def test_connection_span_and_cancellation_for_a_third_party_consumer():
    exporter = span_exporter()
    before = MetricsSnapshot.collect()
    communicator = WebsocketCommunicator(WSMonitorMiddleware(router(), label="graphql"),
                                         "/ws/third/", subprotocols=["graphql-ws"])
    await communicator.connect(timeout=3)
    communicator.future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await communicator.future
    assert_metric_diff(before, "ws_closes_total", 1, code="1006", **LABEL)
    assert_metric_diff(before, "ws_connections_active", 0, **LABEL)
    (span,) = exporter.get_finished_spans()
    assert span.attributes["wsmonitor.consumer"] == "graphql"
    assert span.attributes["websocket.subprotocol"] == "graphql-ws"


async def test_other_protocols_pass_through():
    calls = []

    async def http_app(scope, receive, send):
        calls.append(scope["type"])

    await WSMonitorMiddleware(http_app)({"type": "http"}, None, None)
    assert calls == ["http"]


async def test_an_origin_channels_cannot_parse_is_refused_not_an_error():
    # channels' OriginValidator raises ValueError on a port that is not a number: a client
    # could otherwise turn every handshake into HTTP 500 and an application error.
    from channels.security.websocket import OriginValidator

    before = MetricsSnapshot.collect()
    app = WSMonitorMiddleware(OriginValidator(router(), ["http://testserver"]))
    for origin in (b"http://testserver:abc", b"http://testserver:99999999"):
        communicator = WebsocketCommunicator(app, "/ws/third/", headers=[(b"origin", origin)])
        assert not (await communicator.connect(timeout=3))[0], origin
        await communicator.disconnect(timeout=3)
    labels = {"consumer": "websocket"}
    assert_metric_diff(before, "ws_connects_rejected_total", 2, reason="denied", **labels)
    assert_metric_diff(before, "ws_connects_rejected_total", 0, reason="error", **labels)
    assert_metric_diff(before, "ws_errors_total", 0, **labels)
