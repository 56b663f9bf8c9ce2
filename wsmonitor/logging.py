"""structlog rendering shared with stdlib logging, and the automatic set-up of a bare project.

wsmonitor is a guest in the project's logging. :class:`Formatter` renders any
record (structlog's and the standard library's) as wsmonitor does; name it in
Django's ``LOGGING``::

    LOGGING = {
        "version": 1,
        "formatters": {"wsmonitor": {"()": "wsmonitor.logging.Formatter", "format": "json"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "wsmonitor"}},
        "root": {"handlers": ["console"], "level": "INFO"},
    }

:func:`configure` (``WSMONITOR["CONFIGURE_LOGGING"]``, on by default) configures
structlog, and adds a root handler only where the project configured none; see
docs/logging.md for exactly what it changes.
"""

import logging
import re
import sys

import structlog
from opentelemetry import trace

from .conf import get_config

logger = structlog.get_logger("wsmonitor")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The format daphne's command line passes to ``logging.basicConfig`` (``--log-fmt``'s default).
DAPHNE_LOG_FORMAT = "%(asctime)-15s %(levelname)-8s %(message)s"


def _escape_controls(_logger, _name, event_dict):
    """Keep console lines single-line whatever a client put in a header or path."""
    for key, value in event_dict.items():
        if isinstance(value, str) and _CONTROL.search(value):
            event_dict[key] = value.encode("unicode_escape").decode("ascii")
    return event_dict


def add_trace_ids(_logger, _name, event_dict):
    """Correlate a log line with its trace: the current span's trace and span IDs."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def _shared_processors():
    return [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]


class Formatter(structlog.stdlib.ProcessorFormatter):
    """wsmonitor's rendering for any handler: ``format`` is "json" or "console".

    Records of the standard library get the same fields (level, logger, time,
    session ID and trace IDs when current).
    """

    def __init__(self, format="json", *args, **kwargs):  # noqa: A002 - the dictConfig key
        shared = _shared_processors()
        if format == "console":
            shared.append(_escape_controls)
            renderer = structlog.dev.ConsoleRenderer(colors=False)
        else:
            renderer = structlog.processors.JSONRenderer()
        kwargs.pop("fmt", None)
        kwargs.pop("style", None)
        kwargs.pop("validate", None)
        super().__init__(
            *args, foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            **kwargs)


class _Event(dict):
    """A structlog event on a stdlib record: rendered by :class:`Formatter`, readable elsewhere.

    A project handler with a plain ``logging.Formatter`` prints ``str(record.msg)``:
    the event name and its fields, one line.
    """

    __slots__ = ()

    def __str__(self):
        fields = " ".join(f"{key}={value!r}" for key, value in self.items() if key != "event")
        text = f"{self.get('event')} {fields}".rstrip()
        return text if not _CONTROL.search(text) else text.encode("unicode_escape").decode()


def _wrap_for_formatter(logger, name, event_dict):
    args, kwargs = structlog.stdlib.ProcessorFormatter.wrap_for_formatter(logger, name, event_dict)
    return (_Event(args[0]),), kwargs


class _Handler(logging.StreamHandler):
    """The root handler wsmonitor adds to a project that configured none."""

    def __init__(self, format="json"):  # noqa: A002
        super().__init__()
        self.setFormatter(Formatter(format))
        self.addFilter(_not_printed_yet)


def _not_printed_yet(record):
    """False for a record that a handler below the root has printed already.

    Django's default ``console`` handler on the ``django`` logger (runserver,
    DEBUG) and a project's handlers on its own loggers print their records; the
    root must not print them a second time.
    """
    log = logging.getLogger(record.name) if record.name != "root" else None
    while log is not None and log.name != "root":
        for handler in log.handlers:
            if record.levelno >= handler.level and handler.filter(record):
                return False
        if not log.propagate:
            return False
        log = log.parent
    return True


def _is_daphne_basic_config(handler):
    """The handler daphne's command line adds with ``logging.basicConfig`` before Django starts."""
    formatter = handler.formatter
    return (type(handler) is logging.StreamHandler and handler.stream is sys.stderr
            and not handler.filters and type(formatter) is logging.Formatter
            and formatter._fmt == DAPHNE_LOG_FORMAT)


def configure():
    """Configure structlog, and the root logger if the project left it bare (idempotent).

    Returns True when the root handler was added.
    """
    config = get_config()
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *_shared_processors(), _wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if isinstance(handler, _Handler)]
    others = [handler for handler in root.handlers if not isinstance(handler, _Handler)]
    if not all(_is_daphne_basic_config(handler) for handler in others):
        return False  # the project configured the root logger: its handlers, its formats
    for handler in others:
        root.removeHandler(handler)  # daphne's stand-in: it would print every record twice
    for handler in ours:
        root.removeHandler(handler)
    root.addHandler(_Handler(config["LOG_FORMAT"]))
    root.setLevel(config["LOG_LEVEL"])
    return True
