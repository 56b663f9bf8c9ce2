"""Settings of the benchmark project; the variant comes from env BENCH_VARIANT at daphne start."""

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

USES_WSMONITOR = VARIANT in ("metrics", "tracing")

# django_prometheus is installed in every variant so /metrics can be scraped and compared the same
# way; it adds nothing to the WebSocket path.
INSTALLED_APPS = ["channels", "django_prometheus"]
if USES_WSMONITOR:
    INSTALLED_APPS.append("wsmonitor")

MIDDLEWARE = []

# Where wsmonitor's structlog lines go: a file, never the terminal (stdout would be the bottleneck).
LOG_FILE = os.environ.get("BENCH_LOG_FILE", os.devnull)

WSMONITOR = {
    "NODE": "bench",
    "METRICS": True,
    "LOGS": True,
    "TRACING": VARIANT == "tracing",
    "LOG_FORMAT": "json",
}
if VARIANT == "tracing":
    # Connection spans and message spans, every one sampled (issue 3 names may differ: adjust here).
    WSMONITOR.update({"TRACE_MESSAGES": True, "TRACE_SAMPLE_RATE": 1.0})

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"bare": {"format": "%(message)s"}},
    "handlers": {
        "file": {"class": "logging.FileHandler", "filename": LOG_FILE, "formatter": "bare"},
    },
    "loggers": {
        "wsmonitor": {"handlers": ["file"], "level": "INFO", "propagate": False},
        "daphne": {"handlers": ["file"], "level": "WARNING", "propagate": False},
        "django": {"handlers": ["file"], "level": "WARNING", "propagate": False},
    },
    "root": {"handlers": ["file"], "level": "WARNING"},
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
