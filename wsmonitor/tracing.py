"""OpenTelemetry spans for connections and messages, and W3C context propagation.

wsmonitor uses whatever TracerProvider the application installed; with none,
``get_tracer()`` returns None and no span work is done at all.
"""

import json
from urllib.parse import parse_qs

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from . import __version__

#: Close codes that mark a connection span as an error (settings add application codes).
ABNORMAL_CLOSE_CODES = frozenset({1002, 1003, 1006, 1007, 1008, 1009, 1010, 1011, 1014, 1015})
_PROPAGATION_KEYS = ("traceparent", "tracestate")
_MAX_QUERY = 4096  # longer query strings are not searched for a traceparent
#: Longest JSON message (characters) searched for a traceparent: parsing it is work the
#: application repeats, so a huge one is not parsed twice.
MAX_TRACED_MESSAGE = 65536
ROOT_CONTEXT = Context()  # an empty context: a span started in it begins a new trace

_cached = (None, None)


def get_tracer():
    """The wsmonitor tracer of the installed provider, or None when none is installed."""
    global _cached
    provider = trace.get_tracer_provider()
    if provider is _cached[0]:
        return _cached[1]
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        tracer = None
    else:
        tracer = provider.get_tracer("wsmonitor", __version__)
    _cached = (provider, tracer)
    return tracer


def _single(values):
    """One value, or None when absent or repeated (ambiguous: start a new trace)."""
    return values[0] if len(values) == 1 else None


def handshake_context(scope):
    """Parent context from the upgrade's W3C headers or, for browsers, its query string."""
    found = {key: [] for key in _PROPAGATION_KEYS}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        if key in found:
            found[key].append(value.decode("latin-1"))
    if not found["traceparent"]:
        query = scope.get("query_string", b"")
        if b"traceparent" in query and len(query) <= _MAX_QUERY:
            params = parse_qs(query.decode("latin-1"))
            found = {key: params.get(key, []) for key in _PROPAGATION_KEYS}
    carrier = {key: value for key, values in found.items() if (value := _single(values))}
    if "traceparent" not in carrier:
        return None
    context = propagate.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def message_context(text, field):
    """Parent context from a JSON message's top-level ``field``, if it carries a valid one.

    Client input: never raises, whatever the text (deep nesting makes ``json.loads``
    raise RecursionError), and a message over ``MAX_TRACED_MESSAGE`` characters is
    not parsed for it.
    """
    if text is None or field not in text or len(text) > MAX_TRACED_MESSAGE:
        return None  # the cheap tests first: most messages carry none
    try:
        content = json.loads(text)
        value = content.get(field) if isinstance(content, dict) else None
        if not isinstance(value, str):
            return None
        context = propagate.extract({"traceparent": value})
        return context if trace.get_current_span(context).get_span_context().is_valid else None
    except Exception:  # RecursionError, MemoryError, a propagator's own bug: a new trace
        return None


def envelope_context(envelope):
    """Parent context carried by a channel-layer event's wsmonitor envelope."""
    if not isinstance(envelope, dict) or "traceparent" not in envelope:
        return None
    carrier = {key: envelope[key] for key in _PROPAGATION_KEYS
               if isinstance(envelope.get(key), str)}
    context = propagate.extract(carrier)
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def inject(carrier):
    """Write the current context's ``traceparent`` (and ``tracestate``) into ``carrier``."""
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(carrier)
    return carrier


def exemplar(span=None):
    """The span (default: the current one) as an OpenMetrics exemplar if it is sampled."""
    context = (span or trace.get_current_span()).get_span_context()
    if context.is_valid and context.trace_flags.sampled:
        return {"trace_id": format(context.trace_id, "032x"),
                "span_id": format(context.span_id, "016x")}
    return None


def start_connection_span(tracer, scope, session_id, label, redact=False):
    """The ``ws.connection`` span; ``redact`` (``REDACT_CLIENTS``) leaves out the peer address."""
    attributes = {"websocket.session.id": session_id, "url.path": scope.get("path", ""),
                  "wsmonitor.consumer": label}
    client = scope.get("client")
    if client and not redact:
        attributes["client.address"] = client[0]
    for name, value in scope.get("headers", ()):
        if name.lower() == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")[:512]
            break
    return tracer.start_span("ws.connection", context=handshake_context(scope),
                             kind=SpanKind.SERVER, attributes=attributes)


def is_error_code(code, extra_codes):
    return code in ABNORMAL_CLOSE_CODES or code in extra_codes


def end_connection_span(span, code, conn, extra_codes, rejected=None):
    """Close attributes and status, then end the span (the close span in split mode).

    ``rejected`` is the reject reason of a handshake that was never accepted.
    """
    if span.is_recording():
        if code is not None:
            span.set_attribute("websocket.close.code", code)
        span.set_attribute("websocket.messages.received", conn.messages_in)
        span.set_attribute("websocket.messages.sent", conn.messages_out)
        if rejected:
            span.set_attribute("websocket.handshake.rejected", rejected)
        if rejected == "error" or (code is not None and is_error_code(code, extra_codes)):
            span.set_status(Status(StatusCode.ERROR, f"close code {code}" if code else rejected))
    span.end()


def start_close_span(tracer, connection_span, session_id):
    """The short span that records the close when the connection span ended at accept."""
    return tracer.start_span(
        "ws.close", context=trace.set_span_in_context(connection_span), kind=SpanKind.SERVER,
        links=[Link(connection_span.get_span_context())],
        attributes={"websocket.session.id": session_id},
    )


def start_handler_span(tracer, name, parent, connection_span, session_id, kind, new_trace,
                       links=None, attributes=None):
    """A span for one received message or channel-layer event.

    ``parent`` is a context carried by the message or event; without one the
    span is a child of the connection span, or the root of its own trace when
    ``new_trace`` (the ``message`` model), linked to the connection either way.
    ``links`` may pass that link prebuilt (one per connection, not per message),
    and ``attributes`` the span's attributes, likewise (the SDK copies what it
    records; a sampler sees them read-only).
    """
    if parent is None and not new_trace:
        parent, links = trace.set_span_in_context(connection_span), ()
    else:
        links = links or [Link(connection_span.get_span_context())]
        if parent is None:
            parent = ROOT_CONTEXT
    if attributes is None:
        attributes = {"websocket.session.id": session_id}
    return tracer.start_span(name, context=parent, kind=kind, links=links, attributes=attributes)
