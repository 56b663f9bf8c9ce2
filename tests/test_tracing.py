"""Spans and W3C propagation, checked with an in-memory exporter."""

import uuid
import subprocess
import sys

import pytest
import structlog
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from wsmonitor import InstrumentedAsyncJsonWebsocketConsumer
from wsmonitor.testing import span_exporter

from . import consumers

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
MESSAGE_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
MESSAGE_TRACEPARENT = f"00-{MESSAGE_TRACE_ID}-b7ad6b7169203331-01"
NODE = {"NODE": "test-node", "CLOSE_CODES": {4001: "unauthorised"}}


@pytest.fixture
def spans():
    exporter = span_exporter()
    return lambda: exporter.get_finished_spans()


def hex_trace(span):
    return format(span.context.trace_id, "032x")


def only(spans, name):
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


class JsonEcho(InstrumentedAsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive_json(self, content, **kwargs):
        if content.get("whoami"):
            await self.send_json({"channel": self.channel_name})
            return
        structlog.get_logger("user").info("handled")
        await self.send_json({"echo": content.get("n")})

    async def relay(self, event):
        await self.send_json({"relayed": event["body"]})


async def session(consumer, path="/ws/x/", headers=(), messages=(), close=1000, json_mode=False):
    communicator = WebsocketCommunicator(consumer.as_asgi(), path, headers=list(headers))
    connected, _ = await communicator.connect(timeout=3)
    assert connected
    replies = []
    for message in messages:
        if json_mode:
            await communicator.send_json_to(message)
            replies.append(await communicator.receive_json_from(timeout=3))
        else:
            await communicator.send_to(text_data=message)
            replies.append(await communicator.receive_from(timeout=3))
    await communicator.disconnect(code=close, timeout=3)
    return replies


async def test_connection_span_attributes_and_close(spans):
    await session(consumers.Echo, "/ws/echo/", headers=[(b"user-agent", b"pytest-agent/1")],
                  messages=["a", "b"], close=1001)
    span = only(spans(), "ws.connection")
    assert span.kind == SpanKind.SERVER
    attributes = dict(span.attributes)
    assert attributes["url.path"] == "/ws/echo/"
    assert "client.address" not in attributes  # the communicator has no client; daphne test checks it
    assert attributes["user_agent.original"] == "pytest-agent/1"
    assert attributes["websocket.close.code"] == 1001
    assert attributes["websocket.messages.received"] == 2
    assert attributes["websocket.messages.sent"] == 2
    assert len(attributes["websocket.session.id"]) == 36
    assert span.status.status_code == StatusCode.UNSET
    assert span.parent is None


@pytest.mark.parametrize("code, error", [
    (1000, False), (1001, False), (1005, False), (1012, False), (4001, False),
    (1006, True), (1011, True), (1008, True),
])
async def test_abnormal_close_codes_mark_the_span_as_error(spans, code, error):
    await session(consumers.Echo, close=code)
    span = only(spans(), "ws.connection")
    assert (span.status.status_code == StatusCode.ERROR) is error
    assert span.attributes["websocket.close.code"] == code


async def test_declared_application_error_codes(spans):
    with override_settings(WSMONITOR={**NODE, "ERROR_CLOSE_CODES": [4001]}):
        await session(consumers.Echo, close=4001)
    assert only(spans(), "ws.connection").status.status_code == StatusCode.ERROR


async def test_exception_is_recorded_and_stop_consumer_is_not(spans):
    communicator = WebsocketCommunicator(consumers.Echo.as_asgi(), "/ws/")
    await communicator.connect(timeout=3)
    await communicator.send_to(text_data="boom")
    with pytest.raises(RuntimeError):
        await communicator.wait(timeout=3)
    finished = spans()
    message = only(finished, "Echo receive")
    assert message.status.status_code == StatusCode.ERROR
    assert [e.name for e in message.events] == ["exception"]
    connection = only(finished, "ws.connection")
    assert connection.status.status_code == StatusCode.ERROR
    assert connection.attributes["websocket.close.code"] == 1011
    span_exporter()
    await session(consumers.Echo)  # a normal close raises StopConsumer inside channels
    connection = only(spans(), "ws.connection")
    assert connection.status.status_code == StatusCode.UNSET and not connection.events


@pytest.mark.parametrize("headers, query", [
    ([(b"traceparent", TRACEPARENT.encode())], b""),
    ([], b"traceparent=" + TRACEPARENT.encode()),
    ([(b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"vendor=1")], b"traceparent=junk"),
])
async def test_parent_from_header_or_query_parameter(spans, headers, query):
    communicator = WebsocketCommunicator(consumers.Echo.as_asgi(), "/ws/?" + query.decode(),
                                         headers=headers)
    await communicator.connect(timeout=3)
    await communicator.disconnect(timeout=3)
    span = only(spans(), "ws.connection")
    assert hex_trace(span) == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID


@pytest.mark.parametrize("headers, query", [
    ([(b"traceparent", b"garbage")], b""),
    ([(b"traceparent", b"00-" + b"0" * 32 + b"-" + PARENT_ID.encode() + b"-01")], b""),
    ([(b"traceparent", TRACEPARENT.encode() + b"x" * 600)], b""),
    ([(b"traceparent", TRACEPARENT.encode()), (b"traceparent", TRACEPARENT.encode())], b""),
    ([(b"traceparent", "00-ü-é".encode())], b""),
    ([], b"traceparent=" + TRACEPARENT.encode() + b"&traceparent=" + TRACEPARENT.encode()),
    ([], b"traceparent=%00%0a"),
    ([], b"x=" + b"a" * 5000 + b"&traceparent=" + TRACEPARENT.encode()),
])
async def test_bad_handshake_context_starts_a_new_trace(spans, headers, query):
    communicator = WebsocketCommunicator(consumers.Echo.as_asgi(), "/ws/?" + query.decode(),
                                         headers=headers)
    assert (await communicator.connect(timeout=3))[0]
    await communicator.disconnect(timeout=3)
    span = only(spans(), "ws.connection")
    assert span.parent is None and hex_trace(span) != TRACE_ID


async def test_message_model_one_linked_trace_per_message(spans):
    await session(consumers.Echo, headers=[(b"traceparent", TRACEPARENT.encode())],
                  messages=["1", "2", "3"])
    finished = spans()
    connection = only(finished, "ws.connection")
    messages = [s for s in finished if s.name == "Echo receive"]
    assert len(messages) == 3 and len(finished) == 4  # one span per message, none per send
    assert len({hex_trace(s) for s in messages}) == 3
    for span in messages:
        assert span.parent is None and hex_trace(span) != TRACE_ID
        assert [link.context.span_id for link in span.links] == [connection.context.span_id]
        assert span.attributes["websocket.session.id"] == connection.attributes["websocket.session.id"]


async def test_connection_model_message_spans_are_children(spans):
    with override_settings(WSMONITOR={**NODE, "TRACE_MODEL": "connection"}):
        await session(consumers.Echo, messages=["1", "2"])
    finished = spans()
    connection = only(finished, "ws.connection")
    messages = [s for s in finished if s.name == "Echo receive"]
    assert len(messages) == 2
    assert all(s.parent.span_id == connection.context.span_id for s in messages)
    assert all(hex_trace(s) == hex_trace(connection) for s in messages)


async def test_message_spans_can_be_switched_off(spans):
    with override_settings(WSMONITOR={**NODE, "MESSAGE_SPANS": False}):
        await session(consumers.Echo, messages=["1", "2"])
    assert [s.name for s in spans()] == ["ws.connection"]


async def test_tracing_switched_off_makes_no_span(spans):
    with override_settings(WSMONITOR={**NODE, "TRACING": False}):
        await session(consumers.Echo, messages=["1"])
    assert spans() == ()


async def test_json_message_traceparent_is_continued_and_linked(spans):
    await session(JsonEcho, messages=[{"n": 1, "traceparent": MESSAGE_TRACEPARENT},
                                      {"n": 2, "traceparent": "bogus"}, {"n": 3}],
                  json_mode=True)
    finished = spans()
    connection = only(finished, "ws.connection")
    first, second, third = [s for s in finished if s.name == "JsonEcho receive"]
    assert hex_trace(first) == MESSAGE_TRACE_ID
    assert [link.context.span_id for link in first.links] == [connection.context.span_id]
    assert second.parent is None and hex_trace(second) != MESSAGE_TRACE_ID
    assert third.parent is None


async def test_reverse_propagation_into_json_sends(spans):
    with override_settings(WSMONITOR={**NODE, "INJECT_TRACEPARENT": True}):
        replies = await session(JsonEcho, messages=[{"n": 1, "traceparent": MESSAGE_TRACEPARENT}],
                                json_mode=True)
    message = only(spans(), "JsonEcho receive")
    assert replies[0]["echo"] == 1
    assert replies[0]["traceparent"] == (
        f"00-{MESSAGE_TRACE_ID}-{format(message.context.span_id, '016x')}-01")
    span_exporter()
    replies = await session(JsonEcho, messages=[{"n": 1}], json_mode=True)
    assert "traceparent" not in replies[0]  # off by default


async def test_layer_event_carrying_context_continues_the_trace(spans):
    communicator = WebsocketCommunicator(JsonEcho.as_asgi(), "/ws/")
    await communicator.connect(timeout=3)
    await communicator.send_json_to({"whoami": True})
    channel = (await communicator.receive_json_from(timeout=3))["channel"]
    layer = get_channel_layer()
    await layer.send(channel, {"type": "relay", "body": "plain"})
    assert await communicator.receive_json_from(timeout=3) == {"relayed": "plain"}
    await layer.send(channel, {"type": "relay", "body": "traced",
                               "_wsmonitor": {"traceparent": MESSAGE_TRACEPARENT}})
    assert await communicator.receive_json_from(timeout=3) == {"relayed": "traced"}
    await communicator.disconnect(timeout=3)
    finished = spans()
    events = [s for s in finished if s.name == "JsonEcho relay"]
    assert len(events) == 1  # the untraced relay made no span
    assert hex_trace(events[0]) == MESSAGE_TRACE_ID and events[0].kind == SpanKind.CONSUMER
    connection = only(finished, "ws.connection")
    assert [link.context.span_id for link in events[0].links] == [connection.context.span_id]


async def test_split_connection_span(spans):
    with override_settings(WSMONITOR={**NODE, "SPLIT_CONNECTION_SPAN": True}):
        await session(consumers.Echo, messages=["1"], close=1006)
    finished = spans()
    connection, close = only(finished, "ws.connection"), only(finished, "ws.close")
    message = only(finished, "Echo receive")
    assert connection.end_time <= message.start_time  # ended at accept
    assert "websocket.close.code" not in connection.attributes
    assert close.attributes["websocket.close.code"] == 1006
    assert close.status.status_code == StatusCode.ERROR
    assert [link.context.span_id for link in close.links] == [connection.context.span_id]


async def test_split_connection_span_keeps_an_error_raised_in_disconnect(spans):
    with override_settings(WSMONITOR={**NODE, "SPLIT_CONNECTION_SPAN": True}):
        communicator = WebsocketCommunicator(consumers.DisconnectRaises.as_asgi(), "/ws/")
        assert (await communicator.connect(timeout=3))[0]
        await communicator.send_input({"type": "websocket.disconnect", "code": 1000})
        with pytest.raises(RuntimeError, match="disconnect failed"):
            await communicator.wait(timeout=3)
    close = only(spans(), "ws.close")
    assert close.status.status_code == StatusCode.ERROR
    assert [e.attributes["exception.message"] for e in close.events
            if e.name == "exception"] == ["disconnect failed"]


async def test_rejected_handshake_span(spans):
    communicator = WebsocketCommunicator(consumers.Denied.as_asgi(), "/ws/")
    assert not (await communicator.connect(timeout=3))[0]
    await communicator.disconnect(timeout=3)
    span = only(spans(), "ws.connection")
    assert span.attributes["websocket.handshake.rejected"] == "denied"
    assert span.status.status_code == StatusCode.UNSET
    assert "websocket.close.code" not in span.attributes


async def test_logs_carry_trace_and_span_ids(spans, caplog):
    caplog.set_level("INFO")
    await session(JsonEcho, messages=[{"n": 1}], json_mode=True)
    finished = spans()
    connection, message = only(finished, "ws.connection"), only(finished, "JsonEcho receive")
    logged = {r.msg["event"]: r.msg for r in caplog.records if isinstance(r.msg, dict)}
    assert logged["ws_open"]["trace_id"] == hex_trace(connection)
    assert logged["ws_open"]["span_id"] == format(connection.context.span_id, "016x")
    assert logged["handled"]["trace_id"] == hex_trace(message)
    assert logged["handled"]["span_id"] == format(message.context.span_id, "016x")
    assert logged["ws_close"]["trace_id"] == hex_trace(connection)


def test_no_provider_means_no_tracer():
    code = ("import django, os; os.environ['DJANGO_SETTINGS_MODULE']='tests.settings'; "
            "django.setup(); from wsmonitor.tracing import get_tracer; print(get_tracer())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "None"
    assert trace.get_tracer_provider() is not None


class Relay(InstrumentedAsyncJsonWebsocketConsumer):
    async def connect(self):
        self.group = self.scope["url_route"]["kwargs"]["group"]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def receive_json(self, content, **kwargs):
        event = {"type": "relay", "body": content["body"]}
        if "to" in content:
            await self.channel_layer.send(content["to"], event)
        else:
            await self.channel_layer.group_send(self.group, event)

    async def relay(self, event):
        await self.send_json({"relayed": event["body"], "channel": self.channel_name})


def layer_settings(backend, redis_url=None):
    config = {"BACKEND": f"wsmonitor.layers.{backend}"}
    if redis_url:
        # The trace context travels in the random prefix, which needs room for it.
        config["CONFIG"] = {"hosts": [{"address": redis_url, "socket_timeout": None}],
                            "prefix": f"wsmtest{uuid.uuid4().hex[:8]}",
                            "random_prefix_length": 40}
    return {"default": config}


async def relay_through_layer(spans, kind):
    from channels.routing import URLRouter
    from django.urls import path

    app = URLRouter([path("ws/<str:group>/", Relay.as_asgi())])
    group = f"g{uuid.uuid4().hex[:8]}"
    sender = WebsocketCommunicator(app, f"/ws/{group}/")
    receiver = WebsocketCommunicator(app, f"/ws/{group}/")
    assert (await sender.connect(timeout=5))[0] and (await receiver.connect(timeout=5))[0]
    await sender.send_json_to({"body": "to all", "traceparent": MESSAGE_TRACEPARENT})
    got = [await c.receive_json_from(timeout=5) for c in (sender, receiver)]
    assert [g["relayed"] for g in got] == ["to all", "to all"]
    if kind == "send":
        target = got[1]["channel"]
        await sender.send_json_to({"body": "direct", "to": target,
                                   "traceparent": MESSAGE_TRACEPARENT})
        assert (await receiver.receive_json_from(timeout=5))["relayed"] == "direct"
    await sender.disconnect(timeout=5)
    await receiver.disconnect(timeout=5)
    await get_channel_layer().close_pools() if hasattr(get_channel_layer(), "close_pools") else None
    finished = spans()
    senders = [s for s in finished if s.name == "Relay receive"]
    handlers = [s for s in finished if s.name == "Relay relay"]
    assert len(handlers) == (3 if kind == "send" else 2)
    for handler in handlers:
        # The receiving handler continues the sender's message span's trace.
        assert hex_trace(handler) == MESSAGE_TRACE_ID
        assert handler.parent.span_id in {s.context.span_id for s in senders}
        assert handler.kind == SpanKind.CONSUMER
    return handlers


@pytest.mark.parametrize("kind", ["group_send", "send"])
async def test_trace_continues_across_the_in_memory_layer(spans, kind):
    with override_settings(CHANNEL_LAYERS=layer_settings("InMemoryChannelLayer")):
        await relay_through_layer(spans, kind)


@pytest.mark.parametrize("kind", ["group_send", "send"])
async def test_trace_continues_across_real_redis(spans, redis_url, kind):
    with override_settings(CHANNEL_LAYERS=layer_settings("RedisChannelLayer", redis_url)):
        await relay_through_layer(spans, kind)


async def test_trace_crosses_the_layer_with_metrics_off(spans):
    with override_settings(CHANNEL_LAYERS=layer_settings("InMemoryChannelLayer"),
                           WSMONITOR={**NODE, "METRICS": False}):
        await relay_through_layer(spans, "group_send")
