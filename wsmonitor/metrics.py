"""Prometheus instruments, registered in the default registry that django-prometheus exports."""

from prometheus_client import Counter, Gauge, Histogram

from .conf import get_config

LABELS = ("consumer", "node")

# 1 s to daphne's default 24 h websocket timeout.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
SIZE_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
HANDLING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CONNECTIONS_ACTIVE = Gauge(
    "ws_connections_active",
    "Accepted WebSocket connections open now.",
    LABELS,
    multiprocess_mode="livesum",
)
CONNECTS = Counter("ws_connects", "Accepted WebSocket handshakes.", LABELS)
CONNECTS_REJECTED = Counter(
    "ws_connects_rejected",
    "Refused WebSocket handshakes (denied: closed during connect; error: connect raised; "
    "abandoned: the client left before an answer).",
    LABELS + ("reason",),
)
CLOSES = Counter(
    "ws_closes",
    "Closes of accepted connections by close code (undeclared application codes fold to 3xxx/4xxx).",
    LABELS + ("code",),
)
MESSAGES = Counter(
    "ws_messages", "WebSocket messages received (in) and sent (out) by the application.",
    LABELS + ("direction",),
)
MESSAGE_SIZE = Histogram(
    "ws_message_size_bytes", "WebSocket message payload size.", LABELS + ("direction",),
    buckets=SIZE_BUCKETS,
)
CONNECTION_DURATION = Histogram(
    "ws_connection_duration_seconds", "Lifetime of accepted connections, accept to close.",
    LABELS, buckets=DURATION_BUCKETS,
)
MESSAGE_HANDLING = Histogram(
    "ws_message_handling_seconds", "Time spent handling one received message.",
    LABELS, buckets=HANDLING_BUCKETS,
)
ERRORS = Counter(
    "ws_errors", "Exceptions raised by application code, by the stage that raised.",
    LABELS + ("stage",),
)
CAPACITY = Gauge(
    "ws_connections_capacity",
    "Connections this node is sized for (configuration: WSMONITOR['CAPACITY']).",
    ("node",),
    multiprocess_mode="max",
)

REJECT_REASONS = frozenset({"denied", "error", "abandoned"})
ERROR_STAGES = frozenset({"connect", "receive", "disconnect", "send", "handler", "layer"})


def close_code_label(code, declared=frozenset()):
    """Fold any close code into the bounded ``code`` label set."""
    if code is None:
        return "1005"  # a close frame without a status code
    if type(code) is not int:
        return "invalid"
    if 1000 <= code <= 1015:
        return str(code)
    if 3000 <= code <= 4999:
        if code in declared:
            return str(code)
        return "3xxx" if code < 4000 else "4xxx"
    return "invalid"


class BoundMetrics:
    """The labelled children one consumer class uses, resolved once."""

    __slots__ = (
        "consumer", "node", "declared", "active", "connects", "duration", "handling",
        "messages_in", "messages_out", "size_in", "size_out",
    )

    def __init__(self, consumer, node, declared):
        self.consumer, self.node, self.declared = consumer, node, declared
        self.active = CONNECTIONS_ACTIVE.labels(consumer, node)
        self.connects = CONNECTS.labels(consumer, node)
        self.duration = CONNECTION_DURATION.labels(consumer, node)
        self.handling = MESSAGE_HANDLING.labels(consumer, node)
        self.messages_in = MESSAGES.labels(consumer, node, "in")
        self.messages_out = MESSAGES.labels(consumer, node, "out")
        self.size_in = MESSAGE_SIZE.labels(consumer, node, "in")
        self.size_out = MESSAGE_SIZE.labels(consumer, node, "out")
        # Start the series alerts read at 0: rate() cannot see the step of a
        # series that first appears already at 1.
        for code in ("1000", "1001", "1006", "1011"):
            CLOSES.labels(consumer, node, code)
        for reason in REJECT_REASONS:
            CONNECTS_REJECTED.labels(consumer, node, reason)
        for stage in ERROR_STAGES:
            ERRORS.labels(consumer, node, stage)

    def closed(self, code):
        CLOSES.labels(self.consumer, self.node, close_code_label(code, self.declared)).inc()

    def rejected(self, reason):
        CONNECTS_REJECTED.labels(self.consumer, self.node, reason).inc()

    def error(self, stage):
        ERRORS.labels(self.consumer, self.node, stage).inc()


_bound = {}


def bound(consumer):
    """Return the cached :class:`BoundMetrics` for a consumer label."""
    try:
        return _bound[consumer]
    except KeyError:
        config = get_config()
        declared = frozenset(config["CLOSE_CODES"])
        _bound[consumer] = result = BoundMetrics(consumer, config["NODE"], declared)
        return result


def settings_changed():
    _bound.clear()
    set_capacity()


def set_capacity():
    """Export the configured capacity; configuration, not a measurement."""
    CAPACITY.clear()
    config = get_config()
    if config["CAPACITY"] is not None:
        CAPACITY.labels(config["NODE"]).set(config["CAPACITY"])
