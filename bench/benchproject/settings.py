"""Settings of the benchmark project; the variant comes from env BENCH_VARIANT at daphne start."""

import importlib.util
import os
from pathlib import Path

from bench import variants

# Whether the variant can run at all is checked by `python -m bench.probe` before daphne starts.
VARIANT = variants.current()

BASE_DIR = Path(__file__).resolve().parent
SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "bench.benchproject.urls"
ASGI_APPLICATION = "bench.benchproject.asgi.application"
DATABASES = {}

# The fan-out variants run wsmonitor's consumer (metrics + logs) when wsmonitor is installed, so the
# layer instrumentation is complete (the consumer reads its envelope and observes delivery time) and
# only the layer differs between layer-plain and layer-instrumented; channels' consumer otherwise.
FANOUT_INSTRUMENTED_CONSUMER = importlib.util.find_spec("wsmonitor") is not None
TRACED = VARIANT in ("tracing", "tracing-10")
USES_WSMONITOR = VARIANT in ("metrics", "tracing", "tracing-10", variants.MIXED_VARIANT) or (
    VARIANT in variants.FANOUT_VARIANTS and FANOUT_INSTRUMENTED_CONSUMER
)

# django_prometheus is installed in every variant so /metrics can be scraped and compared the same
# way; it adds nothing to the WebSocket path.
INSTALLED_APPS = ["channels", "django_prometheus"]
if USES_WSMONITOR:
    INSTALLED_APPS.append("wsmonitor")

MIDDLEWARE = []

# wsmonitor's structlog lines (ws_open / ws_close, JSON) go to its root handler on stderr, which the
# runner redirects to bench/results/daphne-VARIANT.log.tmp: a file, never a terminal.
WSMONITOR = {
    "NODE": "bench",
    "METRICS": True,
    "LOGS": True,
    "TRACING": TRACED,
    "LOG_FORMAT": "json",
}
if TRACED:
    # Connection spans and one span per received message (TRACE_MODEL "message", the default: each
    # message its own trace, linked to the connection span); sampled by the sampler tracing.py
    # installs (every span, or one trace in ten for tracing-10). `python -m bench.probe tracing`
    # reports the variant unavailable while the installed wsmonitor lacks wsmonitor.tracing or its
    # checks reject these keys.
    WSMONITOR.update({"MESSAGE_SPANS": True, "TRACE_MODEL": "message"})

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        "daphne": {"level": "WARNING"},
        "django": {"level": "WARNING"},
    },
}

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

if VARIANT in variants.FANOUT_VARIANTS:
    backend = "channels_redis.core.RedisChannelLayer"
    if VARIANT == "layer-instrumented":
        backend = variants.instrumented_layer_backend()
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": backend,
            "CONFIG": {
                # socket_timeout None: redis-py 8's 5 s default kills idle receive loops (FIELD-NOTES).
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                # A fresh prefix per server process, so stale keys of earlier runs never count.
                "prefix": f"wsmonbench{os.getpid()}",
                # Raised well above a burst so group_send never drops (default 100).
                "capacity": 10_000,
                "expiry": 60,
                "group_expiry": 600,
            },
        }
    }
else:
    # The echo variants touch no channel layer.
    CHANNEL_LAYERS = {}
