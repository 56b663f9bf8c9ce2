"""Open sessions of every node, shared through Redis (``WSMONITOR["REGISTRY_URL"]``).

Each server process keeps one Redis hash, ``wsmonitor:sessions:<node>:<pid>:<random>``,
mapping session IDs to a JSON entry (node, pid, consumer, path, opened_at, channel
layer alias and channel name). The hash expires after ``REGISTRY_TTL`` seconds
unless the process's heartbeat task refreshes it (every third of the TTL), so a
dead node's sessions disappear on their own. Consumers never wait for Redis:
opens and closes are queued and written by that task; Redis errors are logged
and the hash is rewritten in full once Redis answers again.
"""

import asyncio
import json
import os
import time
import uuid

from . import features
from .conf import get_config
from .logging import logger

KEY_PREFIX = "wsmonitor:sessions:"
CLOSE_EVENT = "wsmonitor.close"


class ProcessRegistry:
    """This process's sessions and the task that mirrors them into Redis."""

    def __init__(self, url, ttl, node):
        self.url, self.ttl, self.node = url, ttl, node
        self.key = f"{KEY_PREFIX}{node}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.sessions = {}  # session_id -> JSON entry
        self.pending = {}  # session_id -> JSON entry, or None to delete
        self.loop = self.task = self.wake = None
        self.full = True  # rewrite the whole hash at the next flush

    def opened(self, conn):
        session_id = conn.session_id
        entry = json.dumps({
            "session_id": session_id, "node": self.node, "pid": os.getpid(),
            "consumer": conn.label, "path": conn.scope.get("path"),
            "opened_at": conn.opened_at or time.time(),
            "layer": conn.layer_alias, "channel": conn.channel_name,
        })
        self.sessions[session_id] = self.pending[session_id] = entry
        self._kick()

    def closed(self, conn):
        if self.sessions.pop(conn.session_id, None) is not None:
            self.pending[conn.session_id] = None
            self._kick()

    def _kick(self):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # at process exit: the process's hash expires on its own
        if self.loop is not loop or self.task.done():
            # First session on this event loop (tests run one loop per test).
            self.loop, self.wake, self.full = loop, asyncio.Event(), True
            self.task = loop.create_task(self._run(), name="wsmonitor-registry")
        self.wake.set()

    async def _run(self):
        from redis import asyncio as aioredis

        client = aioredis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
        failing = False
        try:
            while True:
                try:
                    await asyncio.wait_for(self.wake.wait(), self.ttl / 3)
                except TimeoutError:
                    pass  # heartbeat
                self.wake.clear()
                try:
                    await self._flush(client)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.full = True
                    if not failing and get_config()["LOGS"]:
                        logger.warning("ws_registry_error", error=f"{type(exc).__name__}: {exc}")
                    failing = True
                else:
                    if failing and get_config()["LOGS"]:
                        logger.info("ws_registry_recovered")
                    failing = False
        finally:
            await client.aclose()

    async def _flush(self, client):
        pending, self.pending = self.pending, {}
        full, self.full = self.full, False
        pipe = client.pipeline(transaction=True)
        if full:
            pipe.delete(self.key)
            if self.sessions:
                pipe.hset(self.key, mapping=dict(self.sessions))
        else:
            added = {sid: entry for sid, entry in pending.items() if entry is not None}
            removed = [sid for sid, entry in pending.items() if entry is None]
            if added:
                pipe.hset(self.key, mapping=added)
            if removed:
                pipe.hdel(self.key, *removed)
        pipe.expire(self.key, int(self.ttl))
        try:
            results = await pipe.execute()
        except BaseException:
            self.full = True  # the next flush rewrites everything
            raise
        if not results[-1] and self.sessions:
            # The hash had expired (Redis restarted, or this loop stalled): rewrite it now.
            self.full = True
            self.wake.set()


_registry = None


def get_registry():
    """This process's registry, or None when ``REGISTRY_URL`` is unset."""
    global _registry
    config = get_config()
    url = config["REGISTRY_URL"]
    if not url:
        return None
    current = _registry
    if current is None or (current.url, current.ttl, current.node) != (
            url, config["REGISTRY_TTL"], config["NODE"]):
        _registry = current = ProcessRegistry(url, config["REGISTRY_TTL"], config["NODE"])
    return current


class RegistryFeature(features.Feature):
    """Mirrors this process's open sessions into Redis when ``REGISTRY_URL`` is set."""

    name = "registry"
    kinds = frozenset({"async", "sync"})

    def opened(self, conn):
        registry = get_registry()
        if registry is not None:
            registry.opened(conn)
            conn.state["registry"] = registry

    def closed(self, conn):
        registry = conn.state.pop("registry", None)
        if registry is not None:
            registry.closed(conn)


features.register(RegistryFeature())


# --- Reading the registry (management command, staff view); synchronous --------------------

def _client(url=None):
    import redis

    return redis.Redis.from_url(url or get_config()["REGISTRY_URL"], socket_timeout=5,
                                socket_connect_timeout=5, decode_responses=True)


def list_sessions(url=None):
    """Every registered session of every live process, oldest first."""
    client = _client(url)
    try:
        keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=500))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.hvals(key)
        entries = [json.loads(value) for values in pipe.execute() for value in values]
    finally:
        client.close()
    return sorted(entries, key=lambda entry: entry["opened_at"])


def find_session(session_id, url=None):
    """The entry of one session, or None."""
    client = _client(url)
    try:
        for key in client.scan_iter(match=KEY_PREFIX + "*", count=500):
            value = client.hget(key, session_id)
            if value is not None:
                return json.loads(value)
    finally:
        client.close()
    return None


def valid_close_code(code):
    """Codes an application may send: 1000 or 3000-4999 (autobahn refuses the rest)."""
    return type(code) is int and (code == 1000 or 3000 <= code <= 4999)
