"""Channel-layer instruments and loss reports (wsmonitor.layers).

Layer sends happen in consumers, views, Celery tasks and management commands
alike, so these carry ``node`` but not ``consumer``; only the delivery
histogram, observed in the receiving consumer, knows its consumer.
"""

import socket
import time

from django.conf import settings
from prometheus_client import Counter, Histogram

from .conf import DEFAULTS, get_config
from .logging import logger

LAYER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                 30, 60)
GROUP_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000, 10000)

LAYER_SENDS = Counter(
    "ws_layer_sends",
    "Channel-layer sends by kind (send, group_send) and outcome (ok; full: the channel was full "
    "or a group_send skipped at least one member; error: the layer raised).",
    ("node", "kind", "outcome"),
)
LAYER_SEND_SECONDS = Histogram(
    "ws_layer_send_seconds", "Time one channel-layer send or group_send took.",
    ("node", "kind"), buckets=LAYER_BUCKETS,
)
LAYER_GROUP_SIZE = Histogram(
    "ws_layer_group_size",
    "Members a group_send reached (Redis and in-memory layers; members skipped for capacity "
    "are in ws_layer_messages_dropped_total).",
    ("node",), buckets=GROUP_SIZE_BUCKETS,
)
LAYER_DELIVERY = Histogram(
    "ws_layer_delivery_seconds",
    "Time from a channel-layer send to the start of the receiving consumer's handler "
    "(wall clocks of two hosts: includes their skew).",
    ("consumer", "node"), buckets=LAYER_BUCKETS,
)
LAYER_DROPPED = Counter(
    "ws_layer_messages_dropped",
    "Channel-layer deliveries lost, one per (message, member), by where the loss was seen "
    "(kind: send, group_send, receive) and reason: full (capacity), no_subscriber (pub/sub), "
    "expired (not received within the layer's expiry), group_expiry (sent to a group after the "
    "member's membership lapsed at group_expiry).",
    ("node", "kind", "reason"),
)
LAYER_STALE = Counter(
    "ws_layer_stale_members",
    "Group members left behind by readers that are gone, not counted as lost: memberships of a "
    "reader in this process that ended without group_discard, and (Redis) members of another "
    "process that stopped beating, once per member the first time this node's sends meet them.",
    ("node",),
)

LAYER_LAPSED = Counter(
    "ws_layer_memberships_lapsed",
    "Group memberships of live readers in this process that outlived the layer's group_expiry "
    "(the layer no longer delivers to them; each group_send they then miss is a lost delivery, "
    "counted by the sender in ws_layer_messages_dropped_total{reason=\"group_expiry\"}).",
    ("node",),
)

LAYER_KINDS = ("send", "group_send")
LAYER_OUTCOMES = ("ok", "full", "error")
LAYER_DROPS = (("send", "full"), ("group_send", "full"), ("receive", "full"),
               ("send", "no_subscriber"), ("send", "expired"), ("group_send", "expired"),
               ("receive", "expired"), ("group_send", "group_expiry"))
#: Seconds between two WARNING lines about the same loss (reason and target).
WARN_EVERY = 10.0

_unconfigured = None


def config():
    """wsmonitor's settings, or their documented defaults when Django has no settings.

    The wrapped layers work in scripts without configured settings; so must these.
    """
    global _unconfigured
    if settings.configured:
        return get_config()
    if _unconfigured is None:
        _unconfigured = dict(DEFAULTS, NODE=DEFAULTS["NODE"] or socket.gethostname())
    return _unconfigured


class LayerMetrics:
    """The labelled layer children of one node, resolved once."""

    def __init__(self, node):
        self.node = node
        self.sends = {(kind, outcome): LAYER_SENDS.labels(node, kind, outcome)
                      for kind in LAYER_KINDS for outcome in LAYER_OUTCOMES}
        self.seconds = {kind: LAYER_SEND_SECONDS.labels(node, kind) for kind in LAYER_KINDS}
        self.group_size = LAYER_GROUP_SIZE.labels(node)
        self.stale = LAYER_STALE.labels(node)
        self.lapsed = LAYER_LAPSED.labels(node)
        for kind, reason in LAYER_DROPS:  # start at 0, so rate() sees the first loss
            LAYER_DROPPED.labels(node, kind, reason)

    def sent(self, kind, outcome, seconds):
        self.sends[kind, outcome].inc()
        self.seconds[kind].observe(seconds)

    def dropped(self, kind, reason, count=1):
        if count:
            LAYER_DROPPED.labels(self.node, kind, reason).inc(count)


_layer_metrics = {}
_delivery = {}


def layer():
    """The node's :class:`LayerMetrics`, or None when metrics are off."""
    conf = config()
    if not conf["METRICS"]:
        return None
    node = conf["NODE"]
    try:
        return _layer_metrics[node]
    except KeyError:
        _layer_metrics[node] = result = LayerMetrics(node)
        return result


def delivery(consumer, node):
    """The cached ``ws_layer_delivery_seconds`` child of a consumer label."""
    try:
        return _delivery[consumer, node]
    except KeyError:
        _delivery[consumer, node] = child = LAYER_DELIVERY.labels(consumer, node)
        return child


_warned = {}  # (event, reason, target) -> [last logged at, deliveries not logged yet, session]
_MIXED = object()  # the deliveries carried into the next line belong to several sessions


def lost(kind, reason, count, target, session_id=None, event="ws_layer_loss"):
    """Count ``count`` lost deliveries and log one WARNING per burst and target.

    Within ``WARN_EVERY`` seconds of the last line about the same loss, the
    count is carried into the next line instead of logging again. A line names
    the session of the member the deliveries were lost to, or ``session_id``
    null when unknown or several: never the session of the code that sent
    (structlog's context would add the sender's, so the field is always set).
    """
    if not count:
        return
    m = layer()
    if m is not None:
        if event == "ws_layer_stale":
            m.stale.inc(count)
        elif event == "ws_layer_membership_lapsed":  # a warning of losses, not one itself
            m.lapsed.inc(count)
        else:
            m.dropped(kind, reason, count)
    if not config()["LOGS"]:
        return
    now = time.monotonic()
    key = (event, reason, target)
    state = _warned.get(key)
    if state is not None and now - state[0] < WARN_EVERY:
        if state[1] == 0:
            state[2] = session_id
        elif state[2] != session_id:
            state[2] = _MIXED
        state[1] += count
        return
    if len(_warned) > 1000:  # targets are group and channel names: keep the memory bounded
        _warned.clear()
    carried = state[1] if state is not None else 0
    if carried and state[2] != session_id:
        session_id = None
    _warned[key] = [now, 0, None]
    logger.warning(event, kind=kind, reason=reason, count=count + carried, target=target,
                   session_id=session_id)
