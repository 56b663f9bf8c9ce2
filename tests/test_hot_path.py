"""The per-message path: every observation of a received or sent message is made on the
event-loop thread, sync consumers included, so the lock-free histogram values never need
their locked fallback; channels' dispatch is run inline only where it is channels' own."""

import pytest
from channels import consumer as channels_consumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.testing import WebsocketCommunicator

from wsmonitor import compat, histograms, metrics
from wsmonitor.consumers import InstrumentedMixin

from . import consumers


@pytest.mark.parametrize("consumer", [consumers.SyncEcho])
async def test_sync_consumers_observe_every_message_on_the_loop_thread(consumer):
    if compat._multiprocess():
        pytest.skip("multiprocess mode keeps prometheus_client's values")
    communicator = WebsocketCommunicator(consumer.as_asgi(), "/ws/sync/")
    connected, _ = await communicator.connect(timeout=3)
    assert connected
    label = consumer.__name__
    node = metrics.bound(label).node
    children = [metrics.MESSAGE_SIZE.labels(label, node, "in"),
                metrics.MESSAGE_SIZE.labels(label, node, "out"),
                metrics.MESSAGE_HANDLING.labels(label, node)]
    shared = [histograms.lock_free(child) for child in children]
    assert all(s is not None for s in shared)
    before = [sum(s.counts) for s in shared]
    for i in range(20):
        await communicator.send_to(text_data=f"m{i}")
        assert await communicator.receive_from(timeout=3) == f"m{i}"
    await communicator.disconnect(timeout=3)
    assert [sum(s.counts) - b for s, b in zip(shared, before)] == [20, 20, 20]
    # Nothing went through the locked path for other threads.
    assert all(sum(s.foreign_counts) == 0 and s.foreign_total[0] == 0 for s in shared)


class _SeesEveryMessage:
    """A mixin between wsmonitor's dispatch and channels': it must still run."""

    async def dispatch(self, message):
        self.seen.append(message["type"])
        return await super().dispatch(message)


class _Mixed(InstrumentedMixin, _SeesEveryMessage, AsyncWebsocketConsumer):
    seen = []

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data)


class _PlainEcho(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data)


async def talk(app, path, messages=3):
    communicator = WebsocketCommunicator(app, path)
    connected, _ = await communicator.connect(timeout=3)
    assert connected
    for i in range(messages):
        await communicator.send_to(text_data=f"m{i}")
        assert await communicator.receive_from(timeout=3) == f"m{i}"
    await communicator.disconnect(timeout=3)


def test_channels_dispatch_runs_inline_only_where_it_is_channels_own():
    assert consumers.Echo._wsm_channels_dispatch is True
    assert consumers.SyncEcho._wsm_channels_dispatch is False  # SyncConsumer.dispatch
    assert _Mixed._wsm_channels_dispatch is False


async def test_a_mixin_overriding_dispatch_still_sees_every_message():
    _Mixed.seen.clear()
    await talk(_Mixed.as_asgi(), "/ws/mixed/")
    assert _Mixed.seen.count("websocket.receive") == 3


async def test_the_inline_receive_closes_old_database_connections_as_channels_does(monkeypatch):
    calls = []

    async def counting():
        calls.append(1)

    monkeypatch.setattr(channels_consumer, "aclose_old_connections", counting)
    await talk(_PlainEcho.as_asgi(), "/ws/plain/")
    plain = len(calls)
    calls.clear()
    await talk(consumers.Echo.as_asgi(), "/ws/echo/")
    assert len(calls) == plain >= 3
