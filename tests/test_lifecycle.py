"""Every lifecycle path counts exactly once, driven through channels' WebsocketCommunicator."""

import asyncio
import uuid

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from wsmonitor import InstrumentedAsyncWebsocketConsumer
from wsmonitor.testing import MetricsSnapshot, assert_metric_diff

from . import consumers

NODE = "test-node"


def active(consumer):
    return MetricsSnapshot.collect().value("ws_connections_active", consumer=consumer, node=NODE)


async def open_echo(consumer=consumers.Echo, path="/ws/echo/"):
    communicator = WebsocketCommunicator(consumer.as_asgi(), path)
    connected, _ = await communicator.connect(timeout=3)
    assert connected
    return communicator


async def test_accept_message_and_client_close():
    before = MetricsSnapshot.collect()
    communicator = await open_echo()
    assert active("Echo") == before.value("ws_connections_active", consumer="Echo") + 1
    await communicator.send_to(text_data="héllo")
    assert await communicator.receive_from(timeout=3) == "héllo"
    await communicator.send_to(bytes_data=b"\x00\x01\x02")
    assert await communicator.receive_from(timeout=3) == b"\x00\x01\x02"
    await communicator.disconnect(code=1000, timeout=3)

    labels = {"consumer": "Echo", "node": NODE}
    assert_metric_diff(before, "ws_connects_total", 1, **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="1000", **labels)
    assert_metric_diff(before, "ws_closes_total", 1, **labels)
    assert_metric_diff(before, "ws_messages_total", 2, direction="in", **labels)
    assert_metric_diff(before, "ws_messages_total", 2, direction="out", **labels)
    # "héllo" is 6 bytes in UTF-8, the binary frame 3.
    assert_metric_diff(before, "ws_message_size_bytes_sum", 9, direction="in", **labels)
    assert_metric_diff(before, "ws_message_size_bytes_sum", 9, direction="out", **labels)
    assert_metric_diff(before, "ws_message_size_bytes_bucket", 2, direction="in", le="16.0", **labels)
    assert_metric_diff(before, "ws_message_handling_seconds_count", 2, **labels)
    assert_metric_diff(before, "ws_connection_duration_seconds_count", 1, **labels)
    assert_metric_diff(before, "ws_errors_total", 0, **labels)


async def test_gauge_counts_concurrent_connections_exactly():
    base = active("Echo")
    communicators = [await open_echo() for _ in range(5)]
    assert active("Echo") == base + 5
    for index, communicator in enumerate(communicators):
        await communicator.disconnect(code=1001, timeout=3)
        assert active("Echo") == base + 4 - index
    assert active("Echo") == base


async def test_denied_handshake_never_touches_the_gauge():
    before = MetricsSnapshot.collect()
    communicator = WebsocketCommunicator(consumers.Denied.as_asgi(), "/ws/")
    connected, code = await communicator.connect(timeout=3)
    assert not connected
    await communicator.disconnect(timeout=3)
    labels = {"consumer": "Denied"}
    assert_metric_diff(before, "ws_connects_rejected_total", 1, reason="denied", **labels)
    assert_metric_diff(before, "ws_connects_total", 0, **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)
    assert_metric_diff(before, "ws_closes_total", 0, **labels)


async def test_connect_raising_is_a_rejection_with_an_error():
    before = MetricsSnapshot.collect()
    communicator = WebsocketCommunicator(consumers.ConnectRaises.as_asgi(), "/ws/")
    await communicator.send_input({"type": "websocket.connect"})
    with pytest.raises(RuntimeError, match="connect failed"):
        await communicator.wait(timeout=3)
    labels = {"consumer": "ConnectRaises"}
    assert_metric_diff(before, "ws_connects_rejected_total", 1, reason="error", **labels)
    assert_metric_diff(before, "ws_errors_total", 1, stage="connect", **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)
    assert_metric_diff(before, "ws_closes_total", 0, **labels)


async def test_client_leaving_an_unanswered_handshake_is_abandoned():
    before = MetricsSnapshot.collect()
    communicator = WebsocketCommunicator(consumers.NeverAnswers.as_asgi(), "/ws/")
    await communicator.send_input({"type": "websocket.connect"})
    await communicator.send_input({"type": "websocket.disconnect", "code": 1006})
    await communicator.wait(timeout=3)
    assert_metric_diff(before, "ws_connects_rejected_total", 1, consumer="NeverAnswers",
                       reason="abandoned")
    assert_metric_diff(before, "ws_connections_active", 0, consumer="NeverAnswers")


async def test_exception_in_receive_counts_1011_once():
    before = MetricsSnapshot.collect()
    communicator = await open_echo()
    await communicator.send_to(text_data="boom")
    with pytest.raises(RuntimeError, match="receive failed"):
        await communicator.wait(timeout=3)
    labels = {"consumer": "Echo"}
    assert_metric_diff(before, "ws_errors_total", 1, stage="receive", **labels)
    assert_metric_diff(before, "ws_errors_total", 1, **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="1011", **labels)
    assert_metric_diff(before, "ws_closes_total", 1, **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)


async def test_exception_in_group_handler_counts_1011_once():
    before = MetricsSnapshot.collect()
    communicator = await open_echo()
    await communicator.send_to(text_data="group-boom")
    with pytest.raises(ValueError, match="group handler failed"):
        await communicator.wait(timeout=3)
    labels = {"consumer": "Echo"}
    assert_metric_diff(before, "ws_errors_total", 1, stage="handler", **labels)
    assert_metric_diff(before, "ws_errors_total", 1, **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="1011", **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)


async def test_server_close_counts_the_code_sent_even_if_the_peer_drops():
    before = MetricsSnapshot.collect()
    communicator = await open_echo()
    await communicator.send_to(text_data="close-4001")
    assert await communicator.receive_output(timeout=3) == {"type": "websocket.close", "code": 4001}
    # The peer never answers the close frame: the transport reports 1006.
    await communicator.disconnect(code=1006, timeout=3)
    labels = {"consumer": "Echo"}
    assert_metric_diff(before, "ws_closes_total", 1, code="4001", **labels)
    assert_metric_diff(before, "ws_closes_total", 1, **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)


async def test_server_close_without_code_counts_1000_like_daphne_sends():
    before = MetricsSnapshot.collect()
    communicator = await open_echo()
    await communicator.send_to(text_data="close")
    assert (await communicator.receive_output(timeout=3))["type"] == "websocket.close"
    await communicator.disconnect(code=1000, timeout=3)
    assert_metric_diff(before, "ws_closes_total", 1, consumer="Echo", code="1000")


async def test_exception_in_disconnect_never_decrements_twice():
    before = MetricsSnapshot.collect()
    communicator = await open_echo(consumers.DisconnectRaises)
    with pytest.raises(RuntimeError, match="disconnect failed"):
        await communicator.disconnect(code=1001, timeout=3)
    labels = {"consumer": "DisconnectRaises"}
    assert_metric_diff(before, "ws_errors_total", 1, stage="disconnect", **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="1001", **labels)
    assert_metric_diff(before, "ws_closes_total", 1, **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)


async def test_server_shutdown_cancellation_counts_1006():
    before = MetricsSnapshot.collect()
    communicator = await open_echo()
    communicator.future.cancel()  # what daphne's kill_all_applications does on SIGTERM
    with pytest.raises(asyncio.CancelledError):
        await communicator.future
    labels = {"consumer": "Echo"}
    assert_metric_diff(before, "ws_closes_total", 1, code="1006", **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)
    assert_metric_diff(before, "ws_errors_total", 0, **labels)


@override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "tests.consumers.BrokenLayer"}})
async def test_channel_layer_error_counts_once_and_releases_the_gauge():
    before = MetricsSnapshot.collect()
    communicator = await open_echo()
    assert active("Echo") == before.value("ws_connections_active", consumer="Echo") + 1
    get_channel_layer().fail.set()
    with pytest.raises(TimeoutError, match="Timeout reading"):
        await communicator.wait(timeout=3)
    labels = {"consumer": "Echo"}
    assert_metric_diff(before, "ws_errors_total", 1, stage="layer", **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="1011", **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)


@pytest.mark.parametrize("code, label", [
    (1000, "1000"), (1001, "1001"), (1006, "1006"), (1015, "1015"), (None, "1005"),
    (4001, "4001"),  # declared in tests/settings.py
    (4999, "4xxx"), (4000, "4xxx"), (3000, "3xxx"), (3999, "3xxx"),
    (999, "invalid"), (1016, "invalid"), (2999, "invalid"), (5000, "invalid"), (-1, "invalid"),
    ("1000", "invalid"), (True, "invalid"),
])
async def test_close_code_label_folding(code, label):
    before = MetricsSnapshot.collect()
    communicator = await open_echo()
    await communicator.send_input({"type": "websocket.disconnect", "code": code})
    await communicator.wait(timeout=3)
    assert_metric_diff(before, "ws_closes_total", 1, consumer="Echo", code=label)
    assert_metric_diff(before, "ws_closes_total", 1, consumer="Echo")


async def test_close_code_label_set_stays_bounded():
    for code in range(0, 70000, 97):
        communicator = await open_echo()
        await communicator.send_input({"type": "websocket.disconnect", "code": code})
        await communicator.wait(timeout=3)
    codes = MetricsSnapshot.collect().label_values("ws_closes_total", "code")
    # 4408 and 4012: wsmonitor's own heartbeat and console drain closes
    allowed = {str(c) for c in range(1000, 1016)} | {"4001", "4408", "4012", "3xxx", "4xxx",
                                                     "invalid"}
    assert codes <= allowed, codes - allowed


async def test_session_id_is_set_before_connect_and_in_the_scope():
    first, second = await open_echo(), await open_echo()
    await first.send_to(text_data="session")
    own, in_scope = (await first.receive_from(timeout=3)).split()
    assert own == in_scope and uuid.UUID(own).version == 4
    await second.send_to(text_data="session")
    assert (await second.receive_from(timeout=3)).split()[0] != own
    await first.disconnect(timeout=3)
    await second.disconnect(timeout=3)


async def test_json_consumer_sends_are_counted_under_its_label():
    before = MetricsSnapshot.collect()
    communicator = WebsocketCommunicator(consumers.Json.as_asgi(), "/ws/json/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_json_to({"a": 1})
    assert await communicator.receive_json_from(timeout=3) == {"echo": {"a": 1}}
    await communicator.disconnect(timeout=3)
    assert_metric_diff(before, "ws_messages_total", 1, consumer="json-chat", direction="out")
    assert_metric_diff(before, "ws_messages_total", 1, consumer="json-chat", direction="in")
    assert_metric_diff(before, "ws_closes_total", 1, consumer="json-chat", code="1000")


async def test_metrics_switched_off_per_consumer_and_globally():
    before = MetricsSnapshot.collect()
    for consumer in (consumers.Quiet, consumers.Silent):
        communicator = await open_echo(consumer)
        await communicator.send_to(text_data="x")
        await communicator.receive_from(timeout=3)
        await communicator.disconnect(timeout=3)
    with override_settings(WSMONITOR={"METRICS": False, "NODE": NODE}):
        communicator = await open_echo()
        await communicator.disconnect(timeout=3)
    after = MetricsSnapshot.collect()
    assert after.value("ws_connects_total", consumer="Quiet") == 0
    assert after.value("ws_connects_total", consumer="Silent") == 0
    assert_metric_diff(before, "ws_connects_total", 0, after=after, consumer="Echo")


async def test_node_label_follows_settings_changes():
    with override_settings(WSMONITOR={"NODE": "elsewhere"}):
        before = MetricsSnapshot.collect()
        communicator = await open_echo()
        await communicator.disconnect(timeout=3)
        assert_metric_diff(before, "ws_connects_total", 1, consumer="Echo", node="elsewhere")


async def test_connect_failing_on_a_dead_redis_is_counted_and_logged_once(caplog):
    """group_add fails in connect(), then channels' cleanup of the layer's receive fails too."""
    pytest.importorskip("channels_redis")
    import logging

    from django.test import override_settings

    from .conftest import free_port

    class Joins(InstrumentedAsyncWebsocketConsumer):
        async def connect(self):
            await self.channel_layer.group_add("room", self.channel_name)
            await self.accept()

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: like Redis down
    layers = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                          "CONFIG": {"hosts": [{"address": dead, "socket_timeout": 1,
                                                "socket_connect_timeout": 1}]}}}
    before = MetricsSnapshot.collect()
    caplog.set_level(logging.ERROR)
    with override_settings(CHANNEL_LAYERS=layers):
        communicator = WebsocketCommunicator(Joins.as_asgi(), "/ws/joins/")
        with pytest.raises(Exception, match="connecting to"):  # daphne answers HTTP 500
            await communicator.connect(timeout=5)
    labels = {"consumer": "Joins"}
    assert_metric_diff(before, "ws_errors_total", 1, stage="connect", **labels)
    assert_metric_diff(before, "ws_errors_total", 0, stage="layer", **labels)
    assert_metric_diff(before, "ws_connects_rejected_total", 1, reason="error", **labels)
    errors = [r for r in caplog.records if "ws_error" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]


@pytest.fixture
def feature():
    """Register features for one test; unregistered afterwards."""
    from wsmonitor import features

    names = []

    def register(feature):
        names.append(feature.name)
        return features.register(feature)

    yield register
    for name in names:
        features.unregister(name)


def absorbing_feature(kinds):
    """A feature whose absorber swallows "swallow" and raises on "crash"."""
    from wsmonitor import features

    class Absorbs(features.Feature):
        name = "test_absorbs"

        def opened(self, conn):
            conn.add_absorber(self.absorb)

        def absorb(self, message):
            if message.get("text") == "crash":
                raise RuntimeError("absorber bug")
            return message.get("text") == "swallow"

    Absorbs.kinds = frozenset(kinds)
    return Absorbs()


async def test_an_absorber_that_raises_never_breaks_the_connection(feature, caplog):
    import logging

    feature(absorbing_feature({"async"}))
    caplog.set_level(logging.ERROR)
    before = MetricsSnapshot.collect()
    communicator = await open_echo()
    for text in ("crash", "crash", "after"):  # raising lets the message through to the app
        await communicator.send_to(text_data=text)
        assert await communicator.receive_from(timeout=3) == text
    await communicator.send_to(text_data="swallow")
    await communicator.send_to(text_data="last")
    assert await communicator.receive_from(timeout=3) == "last"
    await communicator.disconnect(code=1000, timeout=3)
    labels = {"consumer": "Echo"}
    assert_metric_diff(before, "ws_errors_total", 0, **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="1000", **labels)
    assert_metric_diff(before, "ws_messages_total", 4, direction="in", **labels)
    logged = [r.getMessage() for r in caplog.records if "ws_feature_error" in r.getMessage()]
    assert len(logged) == 1 and "absorb" in logged[0], logged  # once per connection


async def test_the_middleware_runs_absorbers_of_middleware_features(feature, caplog):
    import logging

    from channels.generic.websocket import AsyncWebsocketConsumer

    from wsmonitor import WSMonitorMiddleware

    class PlainEcho(AsyncWebsocketConsumer):
        async def receive(self, text_data=None, bytes_data=None):
            await self.send(text_data=text_data)

    feature(absorbing_feature({"middleware"}))
    caplog.set_level(logging.ERROR)
    before = MetricsSnapshot.collect()
    app = WSMonitorMiddleware(PlainEcho.as_asgi(), label="absorbed")
    communicator = WebsocketCommunicator(app, "/ws/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_to(text_data="swallow")  # never reaches the application
    await communicator.send_to(text_data="crash")
    assert await communicator.receive_from(timeout=3) == "crash"
    await communicator.send_to(text_data="after")
    assert await communicator.receive_from(timeout=3) == "after"
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect(code=1000, timeout=3)
    labels = {"consumer": "absorbed"}
    assert_metric_diff(before, "ws_messages_total", 2, direction="in", **labels)
    assert_metric_diff(before, "ws_errors_total", 0, **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="1000", **labels)
    assert any("ws_feature_error" in r.getMessage() for r in caplog.records)


def test_every_feature_declares_the_consumer_kinds_it_supports():
    from wsmonitor import features

    for registered in features.registered():
        declared = [klass for klass in type(registered).__mro__
                    if "kinds" in vars(klass) and klass is not features.Feature]
        assert declared, f"{type(registered).__qualname__} inherits its kinds"

    class Undeclared(features.Feature):
        name = "test_undeclared"

    for kinds in (None, (), "async", {"async", "websocket"}):
        Undeclared.kinds = kinds
        with pytest.raises(ValueError, match="kinds"):
            features.register(Undeclared())
    assert "test_undeclared" not in [f.name for f in features.registered()]
