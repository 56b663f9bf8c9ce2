"""Closing sessions from the console: in this process directly, on others through the layer."""

from asgiref.sync import async_to_sync

from ..registry import CLOSE_EVENT
from .snapshot import open_connections

MIDDLEWARE_ONLY = ("only wsmonitor's middleware sees this connection on another process: "
                   "its consumer has no handler that a close request could reach")
NO_CHANNEL = "its consumer has no channel layer, and it runs in another process"
IN_MEMORY = ("its consumer uses the in-memory channel layer, which only its own process "
             "can reach")
CLOSING = "it is closing already"


def reach(entry, me):
    """``(route, None)`` if the console can close the session, else ``(None, why not)``.

    route is "local" (this process holds the connection) or "layer" (a
    ``wsmonitor.close`` event to the consumer's channel).
    """
    if not entry.get("closable"):
        return None, CLOSING
    if entry.get("process") == me:
        return "local", None
    if entry.get("kind") == "middleware":
        return None, MIDDLEWARE_ONLY
    channel = entry.get("channel")
    if not channel:
        return None, NO_CHANNEL
    if "inmemory" in channel:
        return None, IN_MEMORY
    return "layer", None


def _local(session_id):
    for conn in open_connections():
        if conn.session_id == session_id:
            return conn
    return None


async def _close_local(session_id, code):
    conn = _local(session_id)
    if conn is None:
        return False
    return await conn.close(code, by="console")


async def _close_remote(entries, code):
    from channels.layers import get_channel_layer

    for entry in entries:
        layer = get_channel_layer(entry.get("layer") or "default")
        if layer is None:
            continue
        await layer.send(entry["channel"], {"type": CLOSE_EVENT, "code": code,
                                            "session_id": entry["session_id"], "by": "console"})
    return len(entries)


def close(entry, code, route):
    """Send the close; True if it went out (the client receives ``code``)."""
    if route == "local":
        return async_to_sync(_close_local)(entry["session_id"], code)
    return async_to_sync(_close_remote)([entry], code) == 1


def close_many(entries, code, me):
    """Close what can be reached of ``entries``; returns (sent, skipped)."""
    local, remote, skipped = [], [], 0
    for entry in entries:
        route, _ = reach(entry, me)
        if route == "local":
            local.append(entry["session_id"])
        elif route == "layer":
            remote.append(entry)
        else:
            skipped += 1

    async def run():
        done = 0
        for session_id in local:
            done += bool(await _close_local(session_id, code))
        if remote:
            done += await _close_remote(remote, code)
        return done

    return async_to_sync(run)(), skipped
