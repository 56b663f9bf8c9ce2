"""Saturation signals of the serving process, sampled by one lightweight task per event loop.

The task starts with the first accepted connection and stops with the last, so
a process with no WebSocket connections runs nothing. Each tick it records:

* ``ws_event_loop_lag_seconds``: how late the loop woke the task from a sleep. A
  handler that blocks the loop (sync I/O, CPU work) delays every connection by
  that much, and shows up here.
* ``ws_send_backlog_bytes`` / ``ws_send_backlog_connections``: under daphne, the
  bytes that the application has "sent" (daphne's ``send`` returns at once) but
  that wait in Twisted's unbounded user-space write buffers because the kernel
  socket buffer is full: the server-side twin of a browser's ``bufferedAmount``.
  A client that stops reading makes them grow. Where they cannot be measured
  (uvicorn, hypercorn: no Twisted reactor) the series are never created, so they
  are absent rather than a 0 that looks healthy.
* ``ws_channel_layer_backlog_messages``: messages waiting for this process in each
  channel layer it has instantiated, where the layer can tell: channels_redis's
  RedisChannelLayer (ZCARD of the process's one Redis key, plus what it already
  pulled into its local buffer) and channels' InMemoryChannelLayer (its queues).
  A consumer too slow for its group traffic makes it grow, up to the capacity
  past which ``group_send`` silently drops. RedisPubSubChannelLayer stores nothing
  to count, so it is absent.
"""

import asyncio
import sys

from prometheus_client import Gauge, Histogram

from . import compat, features
from .conf import get_config

#: Seconds between samples.
SAMPLE_INTERVAL = 0.5

LOOP_LAG = Histogram(
    "ws_event_loop_lag_seconds",
    "How late the serving process's event loop woke a sleeping sampler task.",
    ("node",),
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SEND_BACKLOG_BYTES = Gauge(
    "ws_send_backlog_bytes",
    "Bytes the application has sent that wait in the server's user-space write buffers "
    "(daphne/Twisted) because the kernel socket buffer is full.",
    ("node",), multiprocess_mode="livesum",
)
SEND_BACKLOG_CONNECTIONS = Gauge(
    "ws_send_backlog_connections",
    "WebSocket connections with data waiting in the server's user-space write buffers.",
    ("node",), multiprocess_mode="livesum",
)
LAYER_BACKLOG = Gauge(
    "ws_channel_layer_backlog_messages",
    "Messages waiting for this process in a channel layer (where the layer can tell).",
    ("node", "alias"), multiprocess_mode="livesum",
)

_samplers = {}  # event loop -> _Sampler


class _Sampler:
    def __init__(self, loop):
        self.loop = loop
        self.users = 0
        self.task = None

    async def run(self):
        node = get_config()["NODE"]
        lag = LOOP_LAG.labels(node)
        backlog_bytes = backlog_connections = None
        if _twisted_reactor() is not None:  # measurable here: exported from the first connection
            backlog_bytes = SEND_BACKLOG_BYTES.labels(node)
            backlog_connections = SEND_BACKLOG_CONNECTIONS.labels(node)
        loop = self.loop
        layers = set()
        try:
            while True:
                interval = SAMPLE_INTERVAL
                started = loop.time()
                await asyncio.sleep(interval)
                lag.observe(max(0.0, loop.time() - started - interval))
                backlog = send_backlog()
                if backlog is not None and backlog_bytes is not None:
                    backlog_bytes.set(sum(backlog.values()))
                    backlog_connections.set(len(backlog))
                elif backlog_bytes is not None and compat.disabled("Twisted"):
                    # Not measurable after all: no series rather than a healthy-looking 0.
                    SEND_BACKLOG_BYTES.remove(node)
                    SEND_BACKLOG_CONNECTIONS.remove(node)
                    backlog_bytes = backlog_connections = None
                for alias, waiting in (await layer_backlog()).items():
                    LAYER_BACKLOG.labels(node, alias).set(waiting)
                    layers.add(alias)
        finally:
            # The last connection has gone: nothing waits for it any more.
            if backlog_bytes is not None:
                backlog_bytes.set(0)
                backlog_connections.set(0)
            for alias in layers:
                try:
                    LAYER_BACKLOG.remove(node, alias)
                except KeyError:
                    pass


def acquire():
    """A connection opened on the running loop: make sure its sampler runs."""
    loop = asyncio.get_running_loop()
    sampler = _samplers.get(loop)
    if sampler is None:
        _samplers[loop] = sampler = _Sampler(loop)
    sampler.users += 1
    if sampler.task is None:
        sampler.task = loop.create_task(sampler.run(), name="wsmonitor-saturation-sampler")


def release():
    """A connection acquired on the running loop ended; the last one stops the sampler."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    sampler = _samplers.get(loop)
    if sampler is None:
        return
    sampler.users -= 1
    if sampler.users <= 0:
        del _samplers[loop]
        if sampler.task is not None:
            sampler.task.cancel()


class SaturationFeature(features.Feature):
    """Runs the sampler while this event loop has accepted connections."""

    name = "saturation"
    kinds = features.KINDS  # the event loop and the server's buffers, whoever runs the app

    # No per-connection flag: closed() runs once for each connection opened() ran for, and
    # acquire() counts the user before anything in it can fail, so the two always pair.
    def opened(self, conn):
        acquire()

    def closed(self, conn):
        release()


features.register(SaturationFeature())


def _twisted_reactor():
    # Installed is not serving: "daphne" in INSTALLED_APPS installs Twisted's reactor in
    # any server process (uvicorn's too), but only daphne runs it.
    reactor = sys.modules.get("twisted.internet.reactor")
    if hasattr(reactor, "getWriters") and getattr(reactor, "running", False):
        return reactor
    return None


def _pending_bytes(transport):
    # Twisted's private write buffers, read through wsmonitor.compat: None when they are
    # not shaped as tested, and then the backlog is not measured at all.
    return compat.twisted_pending_bytes(transport)


def _is_websocket(transport):
    # daphne swaps the transport's protocol for autobahn's on the upgrade.
    protocol = getattr(transport, "protocol", None)
    return protocol is not None and hasattr(protocol, "sendMessage")


def send_backlog():
    """``{(host, port) of the peer: bytes waiting}`` for WebSocket transports; None without Twisted."""
    reactor = _twisted_reactor()
    if reactor is None:
        return None
    backlog = {}
    for transport in reactor.getWriters():
        if not _is_websocket(transport):
            continue
        pending = _pending_bytes(transport)
        if pending is None:
            return None
        if pending > 0:
            try:
                peer = transport.getPeer()
                key = (peer.host, peer.port)
            except Exception:
                key = id(transport)
            backlog[key] = pending
    return backlog


def connection_backlog(client):
    """Bytes waiting for the peer ``client`` (the ASGI scope's ``client``); None if unknown."""
    backlog = send_backlog()
    if backlog is None or not client:
        return None
    return backlog.get((client[0], client[1]), 0)


async def layer_backlog():
    """``{alias: messages waiting for this process}`` for the instantiated layers that can tell."""
    try:
        from channels.layers import channel_layers
    except ImportError:  # pragma: no cover
        return {}
    result = {}
    for alias, layer in list(channel_layers.backends.items()):
        try:
            if hasattr(layer, "client_prefix") and hasattr(layer, "consistent_hash"):
                # channels_redis: every specific channel of this process shares one key.
                name = f"specific.{layer.client_prefix}!"
                connection = layer.connection(layer.consistent_hash(name))
                waiting = await asyncio.wait_for(connection.zcard(layer.prefix + name), 1)
                buffered = getattr(layer, "receive_buffer", {})
                result[alias] = waiting + sum(queue.qsize() for queue in list(buffered.values()))
            elif isinstance(getattr(layer, "channels", None), dict):
                # channels' InMemoryChannelLayer: one queue per channel, all in this process.
                result[alias] = sum(queue.qsize() for queue in list(layer.channels.values()))
        except Exception as exc:  # a sample lost is better than a sampler dead
            # ... but never silently, and never as the last value staying exported: the layer's
            # internals may have changed (channels_redis, channels) or its Redis be unreachable.
            config = get_config()
            try:
                LAYER_BACKLOG.remove(config["NODE"], alias)
            except KeyError:
                pass
            if config["LOGS"] and not getattr(layer, "_wsm_backlog_warned", False):
                from .logging import logger

                logger.warning("ws_layer_backlog_error", alias=alias,
                               error=f"{type(exc).__name__}: {exc}",
                               layer=f"{type(layer).__module__}.{type(layer).__qualname__}")
                try:
                    layer._wsm_backlog_warned = True  # once per layer: a Redis outage is long
                except AttributeError:
                    pass
    return result
