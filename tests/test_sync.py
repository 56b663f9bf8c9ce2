"""The sync twins keep every guarantee of the async consumers: metrics, logs, spans, the gauge."""

import asyncio
import logging

import pytest
import structlog
from channels.testing import WebsocketCommunicator

from wsmonitor import InstrumentedWebsocketConsumer
from wsmonitor.testing import MetricsSnapshot, assert_metric_diff, span_exporter

from . import consumers


async def open_sync(consumer=consumers.SyncEcho):
    communicator = WebsocketCommunicator(consumer.as_asgi(), "/ws/sync/")
    connected, _ = await communicator.connect(timeout=3)
    assert connected
    return communicator


async def test_accept_messages_and_close():
    before = MetricsSnapshot.collect()
    communicator = await open_sync()
    assert MetricsSnapshot.collect().value("ws_connections_active", consumer="SyncEcho") == \
        before.value("ws_connections_active", consumer="SyncEcho") + 1
    await communicator.send_to(text_data="héllo")
    assert await communicator.receive_from(timeout=3) == "héllo"
    await communicator.disconnect(code=1001, timeout=3)
    labels = {"consumer": "SyncEcho"}
    assert_metric_diff(before, "ws_connects_total", 1, **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="1001", **labels)
    assert_metric_diff(before, "ws_messages_total", 1, direction="in", **labels)
    assert_metric_diff(before, "ws_messages_total", 1, direction="out", **labels)
    assert_metric_diff(before, "ws_message_size_bytes_sum", 6, direction="out", **labels)
    assert_metric_diff(before, "ws_message_handling_seconds_count", 1, **labels)


@pytest.mark.parametrize("trigger, error, stage", [
    ("boom", RuntimeError, "receive"), ("group-boom", ValueError, "handler"),
])
async def test_exceptions_count_1011_once(trigger, error, stage):
    before = MetricsSnapshot.collect()
    communicator = await open_sync()
    await communicator.send_to(text_data=trigger)
    with pytest.raises(error):
        await communicator.wait(timeout=3)
    labels = {"consumer": "SyncEcho"}
    assert_metric_diff(before, "ws_errors_total", 1, stage=stage, **labels)
    assert_metric_diff(before, "ws_errors_total", 1, **labels)
    assert_metric_diff(before, "ws_closes_total", 1, code="1011", **labels)
    assert_metric_diff(before, "ws_connections_active", 0, **labels)


async def test_rejections():
    before = MetricsSnapshot.collect()
    communicator = WebsocketCommunicator(consumers.SyncDenied.as_asgi(), "/ws/")
    assert not (await communicator.connect(timeout=3))[0]
    await communicator.disconnect(timeout=3)
    communicator = WebsocketCommunicator(consumers.SyncConnectRaises.as_asgi(), "/ws/")
    await communicator.send_input({"type": "websocket.connect"})
    with pytest.raises(RuntimeError):
        await communicator.wait(timeout=3)
    assert_metric_diff(before, "ws_connects_rejected_total", 1, consumer="SyncDenied",
                       reason="denied")
    assert_metric_diff(before, "ws_connects_rejected_total", 1, consumer="SyncConnectRaises",
                       reason="error")
    assert_metric_diff(before, "ws_errors_total", 1, consumer="SyncConnectRaises", stage="connect")
    assert_metric_diff(before, "ws_connections_active", 0, consumer="SyncDenied")


async def test_server_close_disconnect_error_and_shutdown():
    before = MetricsSnapshot.collect()
    communicator = await open_sync()
    await communicator.send_to(text_data="close-4001")
    assert await communicator.receive_output(timeout=3) == {"type": "websocket.close", "code": 4001}
    await communicator.disconnect(code=1006, timeout=3)
    communicator = await open_sync(consumers.SyncDisconnectRaises)
    with pytest.raises(RuntimeError):
        await communicator.disconnect(code=1000, timeout=3)
    communicator = await open_sync()
    communicator.future.cancel()
    with pytest.raises(asyncio.CancelledError):
        await communicator.future
    assert_metric_diff(before, "ws_closes_total", 1, consumer="SyncEcho", code="4001")
    assert_metric_diff(before, "ws_closes_total", 1, consumer="SyncEcho", code="1006")
    assert_metric_diff(before, "ws_closes_total", 2, consumer="SyncEcho")
    assert_metric_diff(before, "ws_closes_total", 1, consumer="SyncDisconnectRaises", code="1000")
    assert_metric_diff(before, "ws_errors_total", 1, consumer="SyncDisconnectRaises",
                       stage="disconnect")
    for name in ("SyncEcho", "SyncDisconnectRaises"):
        assert_metric_diff(before, "ws_connections_active", 0, consumer=name)


async def test_json_twin_and_session_id():
    before = MetricsSnapshot.collect()
    communicator = WebsocketCommunicator(consumers.SyncJson.as_asgi(), "/ws/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_json_to({"a": 1})
    assert await communicator.receive_json_from(timeout=3) == {"echo": {"a": 1}}
    await communicator.disconnect(timeout=3)
    assert_metric_diff(before, "ws_messages_total", 1, consumer="sync-json", direction="out")
    communicator = await open_sync()
    await communicator.send_to(text_data="session")
    own, in_scope = (await communicator.receive_from(timeout=3)).split()
    assert own == in_scope
    await communicator.disconnect(timeout=3)


class SyncLogging(InstrumentedWebsocketConsumer):
    def connect(self):
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        structlog.get_logger("user").info("sync_handler")
        self.send(text_data=text_data)


async def test_spans_and_logs_reach_the_sync_handler_thread(caplog):
    caplog.set_level(logging.INFO)
    exporter = span_exporter()
    communicator = WebsocketCommunicator(SyncLogging.as_asgi(), "/ws/")
    await communicator.connect(timeout=3)
    await communicator.send_to(text_data="x")
    await communicator.receive_from(timeout=3)
    await communicator.disconnect(timeout=3)
    spans = exporter.get_finished_spans()
    message = next(s for s in spans if s.name == "SyncLogging receive")
    logged = {r.msg["event"]: r.msg for r in caplog.records if isinstance(r.msg, dict)}
    handler_line = logged["sync_handler"]
    assert handler_line["session_id"] == logged["ws_open"]["session_id"]
    assert handler_line["trace_id"] == format(message.context.trace_id, "032x")
