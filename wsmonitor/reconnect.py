"""Reconnect reports: wsmonitor.js puts ``?reconnect=<attempts>`` on the URL of a reconnect."""

from urllib.parse import parse_qsl

from prometheus_client import Counter

from . import features
from . import metrics as _metrics

#: Query parameter wsmonitor.js sets on a reconnect: how many attempts it took.
RECONNECT_PARAM = "reconnect"
_PARAM = RECONNECT_PARAM.encode()
#: Longest query string searched for the parameter.
MAX_QUERY = 4096

CLIENT_RECONNECTS = Counter(
    "ws_client_reconnects",
    "Connections that clients reported as reconnects, by attempts it took (wsmonitor.js).",
    _metrics.LABELS + ("attempts",),
)
RECONNECT_ATTEMPTS = ("1", "2", "3-5", "6-10", "11+")


def reconnect_attempts_label(attempts):
    """Fold a client's reported attempt count into the bounded ``attempts`` label."""
    if attempts <= 2:
        return str(attempts)
    if attempts <= 5:
        return "3-5"
    return "6-10" if attempts <= 10 else "11+"


def reported_reconnect_attempts(scope):
    """The attempt count a client put in the ``reconnect`` query parameter, or None.

    Client input: anything but 1 to 6 ASCII digits (``²`` is a digit to
    ``str.isdigit`` but not to ``int``) is ignored.
    """
    query = scope.get("query_string")
    if not isinstance(query, bytes) or _PARAM not in query or len(query) > MAX_QUERY:
        return None
    for key, value in parse_qsl(query.decode("latin-1")):
        if key == RECONNECT_PARAM:
            if value.isascii() and value.isdigit() and len(value) <= 6 and int(value) > 0:
                return int(value)
            return None
    return None


def count_reconnect(consumer, node, attempts):
    CLIENT_RECONNECTS.labels(consumer, node, reconnect_attempts_label(attempts)).inc()


class ReconnectFeature(features.Feature):
    """Counts ``ws_client_reconnects_total`` from what the client reported."""

    name = "reconnect"
    kinds = features.KINDS  # the query string of any handshake

    def opened(self, conn):
        metrics = conn.metrics
        if metrics is not None:
            attempts = reported_reconnect_attempts(conn.scope)
            if attempts is not None:
                count_reconnect(metrics.consumer, metrics.node, attempts)


features.register(ReconnectFeature())
