"""Prometheus instruments, registered in prometheus_client's default registry (served by
wsmonitor.urls)."""

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from django.core.signals import setting_changed
from django.dispatch import receiver

from . import compat, tracing
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
MESSAGE_SIZE = Histogram(
    "ws_message_size_bytes", "WebSocket message payload size.", LABELS + ("direction",),
    buckets=SIZE_BUCKETS,
)


class MessagesCollector(Collector):
    """``ws_messages_total``, read at scrape time from ``ws_message_size_bytes``' count.

    Both count the same events; deriving one from the other saves the hot path
    an instrument call per message.
    """

    HELP = "WebSocket messages received (in) and sent (out) by the application."

    def __init__(self, families=MESSAGE_SIZE.collect):
        self.families = families  # a callable yielding the families to read the count from

    def describe(self):
        return [CounterMetricFamily("ws_messages", self.HELP, labels=LABELS + ("direction",))]

    def collect(self):
        family = CounterMetricFamily("ws_messages", self.HELP, labels=LABELS + ("direction",))
        for metric in self.families():
            if metric.name == "ws_message_size_bytes":
                for sample in metric.samples:
                    if sample.name == "ws_message_size_bytes_count":
                        labels = sample.labels
                        family.add_metric(
                            [labels["consumer"], labels["node"], labels["direction"]],
                            sample.value)
        yield family


MESSAGES = MessagesCollector()
REGISTRY.register(MESSAGES)
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
# Only WSMonitorMiddleware, which sees what happens before (or without) a consumer, uses these.
MIDDLEWARE_REJECT_REASONS = frozenset({"no_route"})
MIDDLEWARE_ERROR_STAGES = frozenset({"application"})


def close_code_label(code, declared=frozenset()):
    """Fold any close code into the bounded ``code`` label set."""
    if code is None:
        return "1005"  # a close frame without a status code
    if isinstance(code, bool) or not isinstance(code, int):
        return "invalid"
    code = int(code)  # uvicorn passes websockets' CloseCode members (an IntEnum) as they are
    if 1000 <= code <= 1015:
        return str(code)
    if 3000 <= code <= 4999:
        if code in declared:
            return str(code)
        return "3xxx" if code < 4000 else "4xxx"
    return "invalid"


def observer(child, **exemplars):
    """A cheaper ``child.observe`` for the per-message histograms (wsmonitor.histograms: no
    locks, bisection), used only while prometheus_client's internals behave as tested
    (wsmonitor.compat checks them once, else this is ``child.observe``)."""
    return compat.histogram_observer(child, **exemplars)


#: Seconds between two exemplars of one ``ws_message_handling_seconds`` bucket.
EXEMPLAR_EVERY = 1.0


class BoundMetrics:
    """The labelled children one consumer class uses, resolved once."""

    __slots__ = (
        "consumer", "node", "declared", "active", "connects", "duration", "handling",
        "observe_handling",
        "observe_size_in", "observe_size_out",
    )

    def __init__(self, consumer, node, declared):
        self.consumer, self.node, self.declared = consumer, node, declared
        self.active = CONNECTIONS_ACTIVE.labels(consumer, node)
        self.connects = CONNECTS.labels(consumer, node)
        self.duration = CONNECTION_DURATION.labels(consumer, node)
        self.handling = MESSAGE_HANDLING.labels(consumer, node)
        # observe_handling(seconds, span): a sampled message span becomes its bucket's
        # exemplar, at most once a second per bucket (a scrape exports one per bucket).
        self.observe_handling = observer(self.handling, exemplar_of=tracing.exemplar,
                                         exemplar_every=EXEMPLAR_EVERY)
        self.observe_size_in = observer(MESSAGE_SIZE.labels(consumer, node, "in"))
        self.observe_size_out = observer(MESSAGE_SIZE.labels(consumer, node, "out"))
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

    def prime_middleware(self):
        """Start the middleware-only series at 0 too."""
        for reason in MIDDLEWARE_REJECT_REASONS:
            CONNECTS_REJECTED.labels(self.consumer, self.node, reason)
        for stage in MIDDLEWARE_ERROR_STAGES:
            ERRORS.labels(self.consumer, self.node, stage)

    def rejected(self, reason):
        CONNECTS_REJECTED.labels(self.consumer, self.node, reason).inc()

    def error(self, stage):
        ERRORS.labels(self.consumer, self.node, stage).inc()


#: Application close codes wsmonitor itself sends (features add theirs with
#: :func:`reserve_close_code`); always exported as themselves.
RESERVED_CLOSE_CODES = set()


def reserve_close_code(code):
    RESERVED_CLOSE_CODES.add(code)
    _bound.clear()


_bound = {}
_caches = [_bound]


def cache():
    """A dict for a feature's labelled children; emptied when ``WSMONITOR`` changes."""
    children = {}
    _caches.append(children)
    return children


def bound(consumer):
    """Return the cached :class:`BoundMetrics` for a consumer label."""
    try:
        return _bound[consumer]
    except KeyError:
        config = get_config()
        declared = frozenset(config["CLOSE_CODES"]) | RESERVED_CLOSE_CODES
        _bound[consumer] = result = BoundMetrics(consumer, config["NODE"], declared)
        return result


def settings_changed():
    for children in _caches:
        children.clear()
    set_capacity()


@receiver(setting_changed)
def _reset(*, setting, **kwargs):
    if setting == "WSMONITOR":
        settings_changed()  # bound children and the capacity gauge depend on the node


def set_capacity():
    """Export the configured capacity; configuration, not a measurement."""
    CAPACITY.clear()
    config = get_config()
    if config["CAPACITY"] is not None:
        CAPACITY.labels(config["NODE"]).set(config["CAPACITY"])


# Channel-layer instruments live with the layers: wsmonitor.layer_metrics.

# --- Multiprocess mode (wsmonitor.multiprocess) ----------------------------------------
PROCESS_START = Gauge(
    "ws_process_start_time_seconds",
    "Start time of each live server process; set only in multiprocess mode, where it carries "
    "a pid label and leaves with its process.",
    ("node",), multiprocess_mode="liveall",
)
# --- Instruments that moved to the feature owning them -----------------------------------
_MOVED = {
    "HEARTBEAT_TIMEOUT_CODE": "heartbeat", "HEARTBEAT_RTT": "heartbeat",
    "HEARTBEAT_PINGS": "heartbeat", "HEARTBEAT_TIMEOUTS": "heartbeat",
    "BoundHeartbeat": "heartbeat", "bound_heartbeat": "heartbeat",
    "LOOP_LAG": "saturation", "SEND_BACKLOG_BYTES": "saturation",
    "SEND_BACKLOG_CONNECTIONS": "saturation", "LAYER_BACKLOG": "saturation",
    "STREAM_FIRST_CHUNK": "streaming", "STREAM_CHUNK_INTERVAL": "streaming",
    "STREAM_CHUNKS": "streaming", "STREAM_DURATION": "streaming", "STREAMS": "streaming",
    "STREAM_OUTCOMES": "streaming", "BoundStream": "streaming", "bound_stream": "streaming",
    "CLIENT_RECONNECTS": "reconnect", "RECONNECT_ATTEMPTS": "reconnect",
    "reconnect_attempts_label": "reconnect", "count_reconnect": "reconnect",
    **dict.fromkeys(("LAYER_BUCKETS", "GROUP_SIZE_BUCKETS", "LAYER_SENDS", "LAYER_SEND_SECONDS",
                     "LAYER_GROUP_SIZE", "LAYER_DELIVERY", "LAYER_DROPPED", "LAYER_KINDS",
                     "LAYER_OUTCOMES", "LAYER_DROPS", "LayerMetrics"), "layer_metrics"),
}


def __getattr__(name):
    # Older imports of feature instruments from here keep working.
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'wsmonitor.metrics' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"wsmonitor.{module}"), name)
