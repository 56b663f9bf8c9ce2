"""structlog set-up shared with stdlib logging, so Django's records use the same format."""

import logging
import re

import structlog
from opentelemetry import trace

from .conf import get_config

logger = structlog.get_logger("wsmonitor")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


class _Handler(logging.StreamHandler):
    """wsmonitor's root handler (a class of its own so tests can find it)."""


def configure():
    """Configure structlog and the root logger from ``WSMONITOR`` (idempotent)."""
    config = get_config()
    shared = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if config["LOG_FORMAT"] == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False)
        shared.append(_escape_controls)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    # Take over the root logger: servers such as daphne call basicConfig()
    # first, and a second handler would print every record twice.
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = _Handler()
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(config["LOG_LEVEL"])
