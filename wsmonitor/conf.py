"""wsmonitor settings: one ``WSMONITOR`` dict merged over documented defaults."""

import ipaddress
import logging
import socket
from difflib import get_close_matches
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


_BOOLS = ("METRICS", "LOGS", "CONFIGURE_LOGGING", "TRACING", "MESSAGE_SPANS",
          "SPLIT_CONNECTION_SPAN", "INJECT_TRACEPARENT")


def _seconds(value):
    return type(value) in (int, float) and 0 < value < float("inf")


def _close_code_problem(code, meaning):
    if type(code) is not int:
        return f"{code!r} is not an int"
    if not 3000 <= code <= 4999:
        return f"{code} is not an application close code (3000-4999)"
    if not isinstance(meaning, str):
        return f"the meaning of {code} must be a str, not {meaning!r}"
    return None


def validate(user):
    """The problems of a ``WSMONITOR`` value: ``[(check id, message, hint or None)]``.

    Plain data, so that this module imports nothing of wsmonitor; the system
    checks (wsmonitor.checks) and the start-up log report the same list.
    """
    if user is None:
        return []
    if not isinstance(user, dict):
        return [("wsmonitor.E001", f"WSMONITOR must be a dict, not {type(user).__name__}.", None)]
    problems = []
    unknown = sorted(set(user) - set(DEFAULTS), key=str)
    if unknown:
        problems.append(("wsmonitor.E002",
                         f"WSMONITOR has unknown keys: {', '.join(map(str, unknown))}.",
                         f"Known keys: {', '.join(DEFAULTS)}."))
    if user.get("LOG_FORMAT", "json") not in ("json", "console"):
        problems.append(("wsmonitor.E003", 'WSMONITOR["LOG_FORMAT"] must be "json" or "console".',
                         None))
    codes = user.get("CLOSE_CODES", {})
    if not isinstance(codes, dict):
        problems.append(("wsmonitor.E004", 'WSMONITOR["CLOSE_CODES"] must map application close '
                         f"codes (int, 3000-4999) to their meaning (str), not {codes!r}.", None))
    else:
        for code, meaning in codes.items():
            problem = _close_code_problem(code, meaning)
            if problem:
                problems.append(("wsmonitor.E004", f'WSMONITOR["CLOSE_CODES"] entry {code!r}: '
                                 f"{problem}.", "Declare application close codes (int, "
                                 "3000-4999) with their meaning (str)."))
    node = user.get("NODE")
    if node is not None and not (isinstance(node, str) and node):
        problems.append(("wsmonitor.E005", 'WSMONITOR["NODE"] must be a non-empty string or '
                         "None.", None))
    capacity = user.get("CAPACITY")
    if capacity is not None and not (type(capacity) is int and capacity > 0):
        problems.append(("wsmonitor.E006", 'WSMONITOR["CAPACITY"] must be a positive int or None.',
                         None))
    for key in _BOOLS:
        if not isinstance(user.get(key, True), bool):
            problems.append(("wsmonitor.E007", f'WSMONITOR["{key}"] must be True or False.', None))
    level = user.get("LOG_LEVEL", "INFO")
    if not (isinstance(level, str) and isinstance(logging.getLevelName(level), int)):
        problems.append(("wsmonitor.E008", 'WSMONITOR["LOG_LEVEL"] must be a logging level name '
                         'such as "INFO".', None))
    if user.get("TRACE_MODEL", "message") not in ("message", "connection"):
        problems.append(("wsmonitor.E009", 'WSMONITOR["TRACE_MODEL"] must be "message" or '
                         '"connection".', None))
    field = user.get("TRACEPARENT_FIELD", "traceparent")
    if not (isinstance(field, str) and field):
        problems.append(("wsmonitor.E010", 'WSMONITOR["TRACEPARENT_FIELD"] must be a non-empty '
                         "string.", None))
    error_codes = user.get("ERROR_CLOSE_CODES", ())
    if not isinstance(error_codes, (list, tuple, set, frozenset)):
        problems.append(("wsmonitor.E011", 'WSMONITOR["ERROR_CLOSE_CODES"] must be a list of '
                         "application close codes (int, 3000-4999).", None))
    else:
        for code in error_codes:
            if not (type(code) is int and 3000 <= code <= 4999):
                problems.append(("wsmonitor.E011", f'WSMONITOR["ERROR_CLOSE_CODES"] entry {code!r} '
                                 "is not an application close code (int, 3000-4999).", None))
    networks = user.get("METRICS_ALLOWED_NETWORKS")
    if networks is not None:
        try:
            if isinstance(networks, str):
                raise ValueError("a list is needed")
            for network in networks:
                ipaddress.ip_network(network, strict=False)
        except (TypeError, ValueError) as exc:
            problems.append(("wsmonitor.E012", 'WSMONITOR["METRICS_ALLOWED_NETWORKS"] must be a '
                             f'list of networks such as "10.0.0.0/8": {exc}.', None))
    token = user.get("METRICS_TOKEN")
    if token is not None and not (isinstance(token, str) and len(token) >= 16):
        problems.append(("wsmonitor.E013", 'WSMONITOR["METRICS_TOKEN"] must be a string of at '
                         "least 16 characters, or None.", None))
    url = user.get("REGISTRY_URL")
    if url is not None and not (isinstance(url, str)
                                and url.startswith(("redis://", "rediss://", "unix://"))):
        problems.append(("wsmonitor.E014", 'WSMONITOR["REGISTRY_URL"] must be None or a redis://, '
                         "rediss:// or unix:// URL.", None))
    ttl = user.get("REGISTRY_TTL", 30)
    if not (type(ttl) in (int, float) and ttl >= 3):
        problems.append(("wsmonitor.E015", 'WSMONITOR["REGISTRY_TTL"] must be a number of '
                         "seconds, at least 3.", None))
    for key, check_id in (("HEARTBEAT_INTERVAL", "wsmonitor.E016"),
                          ("HEARTBEAT_TIMEOUT", "wsmonitor.E017")):
        if not _seconds(user.get(key, DEFAULTS[key])):
            problems.append((check_id, f'WSMONITOR["{key}"] must be a positive number of seconds.',
                             None))
    problems.extend(_console_problems(user))
    return problems


def _console_problems(user):
    """The console's settings (wsmonitor.console)."""
    problems = []
    if not isinstance(user.get("CONSOLE", True), bool) or not isinstance(
            user.get("REDACT_CLIENTS", False), bool):
        problems.append(("wsmonitor.E020", 'WSMONITOR["CONSOLE"] and ["REDACT_CLIENTS"] must be '
                         "True or False.", None))
    interval = user.get("CONSOLE_INTERVAL", DEFAULTS["CONSOLE_INTERVAL"])
    history = user.get("CONSOLE_HISTORY", DEFAULTS["CONSOLE_HISTORY"])
    if not (_seconds(interval) and interval >= 0.1 and _seconds(history) and history >= interval):
        problems.append(("wsmonitor.E021", 'WSMONITOR["CONSOLE_INTERVAL"] must be at least 0.1 s '
                         'and ["CONSOLE_HISTORY"] at least one interval.', None))
    for key in ("CONSOLE_CLOSED_KEEP", "CONSOLE_PAGE_SIZE"):
        value = user.get(key, DEFAULTS[key])
        if not (type(value) is int and 1 <= value <= 10000):
            problems.append(("wsmonitor.E022", f'WSMONITOR["{key}"] must be an int from 1 to '
                             "10000.", None))
    url = user.get("CONSOLE_TRACE_URL")
    if url is not None and not (isinstance(url, str) and "{trace_id}" in url):
        problems.append(("wsmonitor.E023", 'WSMONITOR["CONSOLE_TRACE_URL"] must be None or a URL '
                         'containing "{trace_id}".', None))
    code = user.get("CONSOLE_DRAIN_CODE", DEFAULTS["CONSOLE_DRAIN_CODE"])
    if not (type(code) is int and (code == 1000 or 3000 <= code <= 4999)):
        problems.append(("wsmonitor.E024", 'WSMONITOR["CONSOLE_DRAIN_CODE"] must be 1000 or '
                         "3000-4999 (what servers can send).", None))
    return problems


def _misspelt(key, unknown):
    """Whether one of the ``unknown`` keys (upper case) looks like ``key``."""
    word = key.split("_")[-1]
    return any(word in name for name in unknown) or bool(
        get_close_matches(key, unknown, n=1, cutoff=0.75))


#: Key of :func:`get_config`'s result: why ``/metrics`` refuses every request (the settings are
#: invalid and name an access rule), or None.
METRICS_REFUSED = "_METRICS_REFUSED"
_ACCESS_KEYS = ("METRICS_ALLOWED_NETWORKS", "METRICS_TOKEN")


@lru_cache(maxsize=None)
def get_config():
    """Return the merged settings; cached until a setting changes.

    An invalid ``WSMONITOR`` is never merged: the documented defaults apply
    until it is fixed (the start-up log and ``manage.py check`` say why), except
    where a default would be less private than what the project asked for: a
    ``/metrics`` access rule it names shuts ``/metrics`` (``METRICS_REFUSED``), and
    a ``REDACT_CLIENTS`` it names, unless ``False``, keeps client addresses redacted
    (an unknown key that looks like one of them counts too).
    """
    user = getattr(settings, "WSMONITOR", None) or {}
    config = dict(DEFAULTS)
    config[METRICS_REFUSED] = None
    if not validate(user):
        config.update(user)
    else:
        # A typo anywhere must not open /metrics to everyone or un-redact clients. A value
        # that is not a dict cannot say what it meant: both stay closed.
        named = user if isinstance(user, dict) else dict.fromkeys(
            (*_ACCESS_KEYS, "REDACT_CLIENTS"), True)
        # A misspelt key may be the very rule the project meant to set.
        unknown = [str(key).upper() for key in named if key not in DEFAULTS]
        if any(named.get(key) is not None or _misspelt(key, unknown)
               for key in _ACCESS_KEYS):
            config[METRICS_REFUSED] = (
                "WSMONITOR is invalid and sets an access rule for /metrics: every request is "
                "refused until it is fixed (see the ws_config_error log or manage.py check).")
        config["REDACT_CLIENTS"] = (named.get("REDACT_CLIENTS", False) is not False
                                    or _misspelt("REDACT_CLIENTS", unknown))
    if not config["NODE"]:
        config["NODE"] = socket.gethostname()
    return config


@receiver(setting_changed)
def _reset(*, setting, **kwargs):
    if setting == "WSMONITOR":
        get_config.cache_clear()
