"""The variants the benchmark compares, and how to tell whether each one can run."""

import importlib
import importlib.util
import os

#: Echo variants, in the order each round runs them (one daphne process each).
ECHO_VARIANTS = ("plain", "metrics", "tracing-10", "tracing", "otel-asgi")

#: One daphne serving the plain consumer at /ws/plain/ and wsmonitor's at /ws/echo/, as a
#: project that holds both kinds does; each round loads one path, then the other.
MIXED_VARIANT = "mixed"
MIXED_PATHS = {"plain": "/ws/plain/", "metrics": "/ws/echo/"}

#: Fan-out variants: the same plain consumer over an uninstrumented or instrumented Redis layer.
FANOUT_VARIANTS = ("layer-plain", "layer-instrumented")

#: The baseline every other variant is divided by.
BASELINE = {"echo": "plain", "fanout": "layer-plain"}

#: What each variant is, for the report.
DESCRIPTIONS = {
    "plain": "channels AsyncWebsocketConsumer",
    "metrics": "wsmonitor InstrumentedAsyncWebsocketConsumer, metrics + logs, tracing off",
    "tracing-10": "wsmonitor, metrics + logs + tracing (connection and message spans, "
                  "parentbased_traceidratio 0.1: what production runs)",
    "tracing": "wsmonitor, metrics + logs + tracing (connection and message spans, 100 % sampled)",
    "mixed": "one daphne serving the plain consumer and wsmonitor's (metrics + logs) side by side",
    "otel-asgi": "plain consumer inside opentelemetry-instrumentation-asgi's OpenTelemetryMiddleware",
    "layer-plain": "channels_redis RedisChannelLayer (fan-out consumer: wsmonitor's when installed)",
    "layer-instrumented": "wsmonitor.layers.RedisChannelLayer (same consumer as layer-plain)",
}


class Unavailable(Exception):
    """Raised when a variant cannot run against the installed wsmonitor."""


def current():
    """Return the variant this server process was started for (env BENCH_VARIANT)."""
    name = os.environ.get("BENCH_VARIANT", "plain")
    if name not in ECHO_VARIANTS + FANOUT_VARIANTS + (MIXED_VARIANT,):
        raise Unavailable(f"unknown variant {name!r}")
    return name


def _wsmonitor_defaults():
    """Return wsmonitor's documented settings defaults, or None when the package is missing."""
    if importlib.util.find_spec("wsmonitor") is None:
        return None
    try:
        conf = importlib.import_module("wsmonitor.conf")
    except ImportError:
        return {}
    for name in ("CONFIG_DEFAULTS", "DEFAULTS", "DEFAULT_CONFIG"):
        value = getattr(conf, name, None)
        if isinstance(value, dict):
            return value
    return {}


def check(name):
    """Raise Unavailable with a reason when variant `name` cannot run here; import nothing heavy."""
    if name in ("plain", "otel-asgi", "layer-plain"):
        return
    defaults = _wsmonitor_defaults()
    if defaults is None:
        raise Unavailable("wsmonitor is not installed or not on the path")
    if name in ("metrics", MIXED_VARIANT):
        return
    if name in ("tracing", "tracing-10"):
        if importlib.util.find_spec("wsmonitor.tracing") is None:
            raise Unavailable("this wsmonitor has no wsmonitor.tracing")
        if defaults and "TRACING" not in defaults:
            raise Unavailable('this wsmonitor has no WSMONITOR["TRACING"] setting')
        return
    if name == "layer-instrumented":
        instrumented_layer_backend()
        return
    raise Unavailable(f"unknown variant {name!r}")


def instrumented_layer_backend():
    """Return the dotted path of the instrumented Redis layer class.

    wsmonitor ships drop-in backends (``wsmonitor.layers.RedisChannelLayer``); this is the one
    place to change if that name moves, or to wrap a layer instead (then adapt
    ``bench/benchproject/settings.py`` where it calls this function). With an older wsmonitor the
    variant is reported unavailable and the fan-out runs the uninstrumented layer only.
    """
    if importlib.util.find_spec("wsmonitor") is None:
        raise Unavailable("wsmonitor is not installed or not on the path")
    if importlib.util.find_spec("wsmonitor.layers") is None:
        raise Unavailable("this wsmonitor has no wsmonitor.layers")
    layers = importlib.import_module("wsmonitor.layers")
    for name in ("InstrumentedRedisChannelLayer", "RedisChannelLayer"):
        if hasattr(layers, name):
            return f"wsmonitor.layers.{name}"
    raise Unavailable("wsmonitor.layers has no instrumented Redis layer class")
