"""wsmonitor settings: one ``WSMONITOR`` dict merged over documented defaults."""

import socket
from functools import lru_cache

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

#: Every key a project may set in ``settings.WSMONITOR``; see the README.
DEFAULTS = {
    # Value of the ``node`` label; None means the host name.
    "NODE": None,
    # Parts that can be switched off globally (and per consumer with the
    # ``wsmonitor_metrics`` / ``wsmonitor_logs`` class attributes).
    "METRICS": True,
    "LOGS": True,
    # Configure structlog and the root logger at start-up. Turn off when the
    # project configures structlog itself.
    "CONFIGURE_LOGGING": True,
    "LOG_FORMAT": "json",  # "json" or "console"
    "LOG_LEVEL": "INFO",
    # Application close codes (3000-4999) exported as themselves in the
    # ``code`` label, with their meaning; undeclared ones fold to 3xxx / 4xxx.
    "CLOSE_CODES": {},
    # OpenTelemetry (per consumer: ``wsmonitor_tracing``). Spans are made only
    # when the application installed a TracerProvider.
    "TRACING": True,
    # "message": each received message starts its own trace, linked to the
    # connection span; "connection": message spans are its children.
    "TRACE_MODEL": "message",
    "MESSAGE_SPANS": True,
    # End ws.connection once the handshake is accepted and record the close
    # as a short ws.close span linked to it (for backends that dislike long spans).
    "SPLIT_CONNECTION_SPAN": False,
    # JSON messages' field carrying a W3C traceparent, both ways.
    "TRACEPARENT_FIELD": "traceparent",
    # Add the current traceparent to JSON messages the server sends.
    "INJECT_TRACEPARENT": False,
    # Application close codes (3000-4999) that mark the connection span as an error.
    "ERROR_CLOSE_CODES": (),
    # Access to wsmonitor's /metrics view (wsmonitor.urls): client networks
    # (CIDR strings) allowed, and/or a bearer token required. None: no rule.
    "METRICS_ALLOWED_NETWORKS": None,
    "METRICS_TOKEN": None,
    # Accepted connections one node is sized for; exported as the
    # ``ws_connections_capacity`` gauge for the capacity alert when set.
    "CAPACITY": None,
    # Session registry shared through Redis (wsmonitor.registry): a redis:// URL
    # turns it on; a dead process's sessions expire after REGISTRY_TTL seconds.
    "REGISTRY_URL": None,
    "REGISTRY_TTL": 30,
    # Application heartbeat of consumers that set ``wsmonitor_heartbeat = True``:
    # seconds between pings, and seconds a ping may stay unanswered before the
    # connection is closed as a zombie (code 4408).
    "HEARTBEAT_INTERVAL": 20,
    "HEARTBEAT_TIMEOUT": 30,
    # Live console (wsmonitor.console; False stops its sampler): seconds between the snapshots each process
    # publishes, seconds of history its charts keep, closes kept per process, page size.
    "CONSOLE": True,
    "CONSOLE_INTERVAL": 5,
    "CONSOLE_HISTORY": 900,
    "CONSOLE_CLOSED_KEEP": 300,
    "CONSOLE_PAGE_SIZE": 50,
    # Link to a session's connection span, e.g. "http://jaeger:16686/trace/{trace_id}".
    "CONSOLE_TRACE_URL": None,
    # Close code of the console's "close every session of this process" action.
    # 1012 (service restart) is what the protocol means, but daphne sends only 1000
    # and 3000-4999, so the default is an application code.
    "CONSOLE_DRAIN_CODE": 4012,
    # Replace client addresses and user names by "redacted" before they leave the process.
    "REDACT_CLIENTS": False,
}


@lru_cache(maxsize=None)
def get_config():
    """Return the merged settings; cached until a setting changes."""
    user = getattr(settings, "WSMONITOR", None) or {}
    config = dict(DEFAULTS)
    if isinstance(user, dict):
        config.update(user)
    if not config["NODE"]:
        config["NODE"] = socket.gethostname()
    return config


@receiver(setting_changed)
def _reset(*, setting, **kwargs):
    if setting == "WSMONITOR":
        get_config.cache_clear()
        # Bound metric children and the capacity gauge depend on the node.
        from . import metrics

        metrics.settings_changed()
