"""Applications the server killed because they outlived its shutdown timeout.

daphne cancels an application still running ``application_close_timeout``
seconds (default 10) after its client left, and logs "Application instance ...
took too long to shut down and was killed." Nothing is lost in a channel layer,
but the application's work is cut short (usually a ``disconnect()`` waiting on
something slow), so it has its own counter, ``ws_applications_killed_total``.

wsmonitor reads daphne's own warning through a filter on the ``daphne.server``
logger that never changes or drops the record, and finds the connection by the
killed task. It sees only what daphne logs: with that logger set above WARNING
the kill is not counted. Other servers have no such timeout (uvicorn never
cancels), and the series is not exported there.
"""

import asyncio
import logging
import re
import sys

from prometheus_client import Counter

from . import features
from .conf import get_config
from .connection import REDACTED, open_connections
from .logging import logger

KILLED = Counter(
    "ws_applications_killed",
    "WebSocket applications the server cancelled because they were still running its "
    "application_close_timeout after the client left (daphne), by consumer; <unknown>: "
    "not a wsmonitor connection.",
    ("consumer", "node"),
)
UNKNOWN = "<unknown>"
#: The logger and the words of daphne's kill warning (daphne.server.Server.application_checker).
DAPHNE_LOGGER = "daphne.server"
KILL_WORDS = "took too long to shut down and was killed"

_CLIENT_IN_REPR = re.compile(r"client=(\[[^\]]*\]|\([^)]*\)|None)")

_exported = set()  # consumer labels whose series exist (bounded: labels are class names)


def _series(consumer):
    node = get_config()["NODE"]
    _exported.add((consumer, node))
    return KILLED.labels(consumer, node)


class ServerKills(features.Feature):
    """Remembers each connection's application task, so a kill names its session."""

    name = "server_kills"
    kinds = features.KINDS  # daphne kills any application task

    def opened(self, conn):
        if DAPHNE_LOGGER not in sys.modules:
            return  # not under daphne: nothing here can be killed this way
        # opened() runs in the counting send of the accept, always on the event loop.
        conn.state[self.name] = asyncio.current_task()
        if (conn.label, get_config()["NODE"]) not in _exported:
            _series(UNKNOWN)  # from 0, so the first kill shows in rate()
            _series(conn.label)


def _find(task, protocol):
    """The open connection whose application is ``task``; by client address if unique."""
    candidates = []
    for conn in list(open_connections()):
        if conn.state.get(ServerKills.name) is task:
            return conn
        client = conn.scope.get("client")
        if client and f"client={list(client)!r}" in protocol:
            candidates.append(conn)
    # A sync consumer's accept runs in another task: its client address is the clue.
    return candidates[0] if len(candidates) == 1 else None


def killed(task, protocol):
    """Count and log one application daphne killed (``protocol`` is its repr)."""
    conn = _find(task, protocol)
    consumer = conn.label if conn is not None else UNKNOWN
    if conn is not None:
        # daphne warns before it cancels: the books close after this, saying what happened.
        conn.closed_by = "killed"
    _series(consumer).inc()
    if conn is not None and not conn.logs:
        return
    if conn is None and not get_config()["LOGS"]:
        return
    if get_config()["REDACT_CLIENTS"]:  # daphne's repr names the peer: client=['host', port]
        protocol = _CLIENT_IN_REPR.sub(f"client={REDACTED}", protocol)
    fields = {"consumer": consumer, "connection": protocol}
    if conn is not None:
        fields.update(session_id=conn.session_id, path=conn.scope.get("path"))
    logger.warning("ws_application_killed", **fields)


class _KillFilter(logging.Filter):
    """Sees daphne's kill warning; lets every record through unchanged."""

    def filter(self, record):
        if KILL_WORDS in str(record.msg) and isinstance(record.args, tuple) \
                and len(record.args) == 2 and "WebSocketProtocol" in str(record.args[1]):
            try:
                killed(record.args[0], str(record.args[1]))
            except Exception:  # never in daphne's way
                pass
        return True


_filter = _KillFilter()


def install():
    """Plug into the lifecycle and daphne's logger (idempotent)."""
    features.register(ServerKills())
    daphne_logger = logging.getLogger(DAPHNE_LOGGER)
    if _filter not in daphne_logger.filters:
        daphne_logger.addFilter(_filter)


install()
