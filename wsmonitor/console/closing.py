"""Closing sessions from the console: in this process directly, on others through the layer."""

import re

from asgiref.sync import async_to_sync

from ..registry import CLOSE_EVENT, valid_close_code
from .snapshot import open_connections

MIDDLEWARE_ONLY = ("only wsmonitor's middleware sees this connection on another process: "
                   "its consumer has no handler that a close request could reach")
NO_CHANNEL = "its consumer has no channel layer, and it runs in another process"
IN_MEMORY = ("its consumer uses the in-memory channel layer, which only its own process "
             "can reach")
CLOSING = "it is closing already"

#: Who a close request may name as the closer; an event naming anyone else (any process
#: that can write to the channel layer can send one) is recorded as closed by "server".
REQUESTERS = ("console", "command")
#: Characters of a close reason kept in logs: the staff user types it, a log line holds it.
MAX_REASON = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def clean_reason(reason):
    """A close reason fit for a log line: a string, control characters escaped, bounded."""
    if not isinstance(reason, str):
        return ""
    reason = reason.strip()[:MAX_REASON]  # escapes make it at most 4 times as long: cut again
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", reason)[:MAX_REASON]


def close_event(entry, code, by, reason=""):
    """The ``wsmonitor.close`` event for ``entry``'s consumer: who asked, and why."""
    return {"type": CLOSE_EVENT, "code": code, "session_id": entry["session_id"], "by": by,
            "reason": clean_reason(reason)}


def take_request(event, conn, session_id):
    """``(code, by)`` of a close request meant for ``session_id``, logged; or None.

    ``by`` is the sender's own word when it is one of :data:`REQUESTERS`: a close from
    ``manage.py wsmonitor_sessions close`` is not recorded as the console's. The reason is
    logged here, on the node that holds the socket: daphne passes none to the client.
    """
    code = event.get("code", 1000)
    if event.get("session_id") != session_id or not valid_close_code(code):
        return None
    by = event.get("by")
    by = by if by in REQUESTERS else "server"
    if conn is None or conn.logs:
        from ..logging import logger

        logger.info("ws_close_requested", target_session_id=session_id, code=code, by=by,
                    reason=clean_reason(event.get("reason")))
    return code, by


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


async def _close_remote(entries, code, reason="", by="console"):
    from channels.layers import get_channel_layer

    sent = 0
    for entry in entries:
        layer = get_channel_layer(entry.get("layer") or "default")
        if layer is None:
            continue
        await layer.send(entry["channel"], close_event(entry, code, by, reason))
        sent += 1
    return sent


def request_close(entry, code, by, reason=""):
    """Ask a registered session's consumer, through its channel layer, to close.

    Raises ValueError when the layer cannot reach it (no layer, or the in-memory one).
    """
    from channels.layers import get_channel_layer

    if not entry.get("channel"):
        raise ValueError("the session's consumer has no channel layer")
    if get_channel_layer(entry.get("layer") or "default") is None:
        raise ValueError(f"no channel layer {entry.get('layer')!r} in CHANNEL_LAYERS")
    if "inmemory" in entry["channel"]:
        raise ValueError("the session uses the in-memory channel layer, which only its own "
                         "process can reach")
    async_to_sync(_close_remote)([entry], code, reason, by)


def close(entry, code, route, reason=""):
    """Send the close; True if it went out (the client receives ``code``).

    The reason is only logged: daphne passes no reason to the client.
    """
    if route == "local":
        return async_to_sync(_close_local)(entry["session_id"], code)
    return async_to_sync(_close_remote)([entry], code, reason) == 1


def close_many(entries, code, me, reason=""):
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
            done += await _close_remote(remote, code, reason)
        return done

    return async_to_sync(run)(), skipped
