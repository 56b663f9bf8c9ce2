"""Prometheus instruments, registered in the default registry that django-prometheus exports."""

from bisect import bisect_left

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

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


def observer(child):
    """A cheaper ``child.observe`` for the per-message histograms.

    prometheus_client's ``Histogram.observe`` checks observability and walks
    the buckets linearly; this adds to the same sum and bucket values, found by
    bisection, for about a third less per call. It falls back to ``observe``
    if the client's internals ever differ (tests/test_metrics.py compares both).
    """
    try:
        total, buckets, bounds = child._sum, child._buckets, tuple(child._upper_bounds)
        total.inc, buckets[0].inc  # noqa: B018 - both value classes have inc
    except (AttributeError, IndexError):
        return child.observe

    def observe(amount, _total=total.inc, _buckets=buckets, _bounds=bounds, _find=bisect_left):
        _total(amount)
        _buckets[_find(_bounds, amount)].inc(1)

    return observe


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
        self.handling = MESSAGE_HANDLING.labels(consumer, node)  # observe(..., exemplar)
        self.observe_handling = observer(self.handling)
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


_bound = {}


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
    _bound.clear()
    set_capacity()


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
# --- Heartbeat, saturation, streaming and client reports (wsmonitor.heartbeat,
# wsmonitor.saturation, wsmonitor.streaming) -------------------------------------

#: Close code wsmonitor sends to a client that stopped answering heartbeats.
HEARTBEAT_TIMEOUT_CODE = 4408
#: Application close codes wsmonitor itself sends; always exported as themselves.
RESERVED_CLOSE_CODES = frozenset({HEARTBEAT_TIMEOUT_CODE})

HEARTBEAT_RTT = Histogram(
    "ws_heartbeat_rtt_seconds",
    "Application heartbeat round trip: ping sent by the consumer to pong dispatched to it.",
    LABELS, buckets=(0.005, 0.025, 0.1, 0.25, 1, 2.5, 5, 10),
)
HEARTBEAT_PINGS = Counter("ws_heartbeat_pings", "Application heartbeat pings sent.", LABELS)
HEARTBEAT_TIMEOUTS = Counter(
    "ws_heartbeat_timeouts",
    "Connections closed with 4408 because heartbeats went unanswered past the timeout.",
    LABELS,
)
CLIENT_RECONNECTS = Counter(
    "ws_client_reconnects",
    "Connections that clients reported as reconnects, by attempts it took (wsmonitor.js).",
    LABELS + ("attempts",),
)
RECONNECT_ATTEMPTS = ("1", "2", "3-5", "6-10", "11+")

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

STREAM_FIRST_CHUNK = Histogram(
    "ws_stream_first_chunk_seconds", "Time from the start of a stream to its first chunk.",
    LABELS + ("stream",), buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STREAM_CHUNK_INTERVAL = Histogram(
    "ws_stream_chunk_interval_seconds", "Time between consecutive chunks of a stream.",
    LABELS + ("stream",), buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
STREAM_CHUNKS = Histogram(
    "ws_stream_chunks", "Chunks sent by one stream.",
    LABELS + ("stream",), buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000),
)
STREAM_DURATION = Histogram(
    "ws_stream_duration_seconds", "Lifetime of a stream, start to end.",
    LABELS + ("stream",), buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
STREAMS = Counter(
    "ws_streams", "Streams ended, by outcome (ok, error: the block raised, cancelled).",
    LABELS + ("stream", "outcome"),
)
STREAM_OUTCOMES = ("ok", "error", "cancelled")


def reconnect_attempts_label(attempts):
    """Fold a client's reported attempt count into the bounded ``attempts`` label."""
    if attempts <= 2:
        return str(attempts)
    if attempts <= 5:
        return "3-5"
    return "6-10" if attempts <= 10 else "11+"


class BoundHeartbeat:
    """The heartbeat children of one consumer label."""

    __slots__ = ("rtt", "pings", "timeouts")

    def __init__(self, consumer, node):
        self.rtt = HEARTBEAT_RTT.labels(consumer, node)
        self.pings = HEARTBEAT_PINGS.labels(consumer, node)
        self.timeouts = HEARTBEAT_TIMEOUTS.labels(consumer, node)
        CLOSES.labels(consumer, node, str(HEARTBEAT_TIMEOUT_CODE))  # starts at 0, like 1006


class BoundStream:
    """The stream children of one (consumer, stream name) pair."""

    __slots__ = ("first_chunk", "interval", "chunks", "duration", "outcomes")

    def __init__(self, consumer, node, stream):
        labels = (consumer, node, stream)
        self.first_chunk = STREAM_FIRST_CHUNK.labels(*labels)
        self.interval = STREAM_CHUNK_INTERVAL.labels(*labels)
        self.chunks = STREAM_CHUNKS.labels(*labels)
        self.duration = STREAM_DURATION.labels(*labels)
        self.outcomes = {outcome: STREAMS.labels(*labels, outcome) for outcome in STREAM_OUTCOMES}


def _cached(key, factory):
    # Shares ``_bound``, so ``settings_changed`` clears these too.
    try:
        return _bound[key]
    except KeyError:
        _bound[key] = result = factory(get_config()["NODE"])
        return result


def bound_heartbeat(consumer):
    return _cached(("heartbeat", consumer), lambda node: BoundHeartbeat(consumer, node))


def bound_stream(consumer, stream):
    return _cached(("stream", consumer, stream), lambda node: BoundStream(consumer, node, stream))


def count_reconnect(consumer, attempts):
    CLIENT_RECONNECTS.labels(consumer, get_config()["NODE"],
                             reconnect_attempts_label(attempts)).inc()
