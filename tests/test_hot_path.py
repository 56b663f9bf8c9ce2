"""The per-message path: every observation of a received or sent message is made on the
event-loop thread, sync consumers included, so the lock-free histogram values never need
their locked fallback."""

import pytest
from channels.testing import WebsocketCommunicator

from wsmonitor import compat, histograms, metrics

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
