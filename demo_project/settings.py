"""Settings of the wsmonitor demo (not the test settings: see tests/settings.py)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "channels",
    "django_prometheus",
    "wsmonitor",
    "demo_project",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "demo_project.urls"
ASGI_APPLICATION = "demo_project.asgi.application"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
}]
STATIC_URL = "static/"

DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.environ.get("DEMO_DB", str(BASE_DIR / "db.sqlite3")),
}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# wsmonitor's instrumented backends (drop-in subclasses of channels' and channels_redis's).
REDIS_URL = os.environ.get("REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {"default": {
        # DEMO_CHANNEL_LAYER=pubsub selects channels_redis's pub/sub layer.
        "BACKEND": "wsmonitor.layers.RedisPubSubChannelLayer"
        if os.environ.get("DEMO_CHANNEL_LAYER") == "pubsub" else "wsmonitor.layers.RedisChannelLayer",
        # redis-py 8's default 5 s socket timeout equals channels_redis's 5 s
        # blocking read and kills idle consumers (channels_redis#422). Its pool
        # also caps a process at 100 connections and raises MaxConnectionsError
        # past that (a burst of 100+ concurrent group_sends does it).
        "CONFIG": {"hosts": [{"address": REDIS_URL, "socket_timeout": None,
                              "max_connections": 1000}]},
    }}
    if os.environ.get("DEMO_CHANNEL_LAYER") != "pubsub":
        # 40 prefix bytes carry the sender's trace context to the handler on another
        # node (12, the default, carries the send time only). Every process sharing
        # this Redis prefix must use the same length.
        CHANNEL_LAYERS["default"]["CONFIG"]["random_prefix_length"] = 40
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "wsmonitor.layers.InMemoryChannelLayer"}}

WSMONITOR = {
    "NODE": os.environ.get("WSMONITOR_NODE") or None,
    "LOG_FORMAT": os.environ.get("WSMONITOR_LOG_FORMAT", "json"),
    "CLOSE_CODES": {4000: "chat room is full"},
    "CAPACITY": 10000,
    # /metrics: loopback only unless WSMONITOR_METRICS_NETWORKS widens it (comma-separated
    # CIDRs); WSMONITOR_METRICS_TOKEN additionally requires "Authorization: Bearer <token>".
    "METRICS_ALLOWED_NETWORKS": os.environ.get(
        "WSMONITOR_METRICS_NETWORKS", "127.0.0.0/8,::1/128").split(","),
    "METRICS_TOKEN": os.environ.get("WSMONITOR_METRICS_TOKEN") or None,
    # Session registry: `manage.py wsmonitor_sessions list` / `close <id> --code 4000`.
    "REGISTRY_URL": REDIS_URL,
    "REGISTRY_TTL": int(os.environ.get("WSMONITOR_REGISTRY_TTL", "30")),
    # The tests shorten these through the environment.
    "HEARTBEAT_INTERVAL": float(os.environ.get("WSMONITOR_HEARTBEAT_INTERVAL", "20")),
    "HEARTBEAT_TIMEOUT": float(os.environ.get("WSMONITOR_HEARTBEAT_TIMEOUT", "30")),
}

# One time zone in every log line. wsmonitor stamps its events in UTC, while Django sets the
# process's time zone to TIME_ZONE (America/Chicago unless set), which the log records'
# asctime and daphne's access log ("[01/Jan/2025:06:00:00]") then follow.
TIME_ZONE = "UTC"
USE_TZ = True

# Django's own records go through wsmonitor's structlog handler on the root
# logger; drop Django's default console handler so they are not printed twice.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {"django": {"handlers": [], "level": "INFO", "propagate": True}},
}

# --- The console (wsmonitor.console): Django auth, a login page, staff permissions -----------
# Sign in at /accounts/login/ with a user made by `manage.py console_user NAME --close`.
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "wsmonitor-console"
LOGOUT_REDIRECT_URL = "index"
TEMPLATES[0]["OPTIONS"]["context_processors"] += [
    "django.contrib.auth.context_processors.auth",
]
WSMONITOR.update({
    "CONSOLE_INTERVAL": float(os.environ.get("WSMONITOR_CONSOLE_INTERVAL", "5")),
    # e.g. http://127.0.0.1:16686/trace/{trace_id} for Jaeger's UI
    "CONSOLE_TRACE_URL": os.environ.get("WSMONITOR_CONSOLE_TRACE_URL") or None,
    "REDACT_CLIENTS": os.environ.get("WSMONITOR_REDACT_CLIENTS") == "1",
})
