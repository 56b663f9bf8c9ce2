"""Configure the OpenTelemetry SDK for the demo from the standard environment variables.

OTEL_TRACES_EXPORTER: "none" (default), "console" (finished spans printed to
stdout, one JSON object a line) or "otlp" (OTLP over HTTP to
OTEL_EXPORTER_OTLP_ENDPOINT). OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER and
OTEL_TRACES_SAMPLER_ARG are read by the SDK itself.
"""

import os


def configure_tracing():
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name in ("", "none"):
        return None
    from opentelemetry import trace
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor,
    )

    os.environ.setdefault("OTEL_SERVICE_NAME", "wsmonitor-demo")
    provider = TracerProvider(resource=Resource.create())  # sampler from OTEL_TRACES_SAMPLER
    if exporter_name == "console":
        exporter = ConsoleSpanExporter(formatter=lambda span: span.to_json(indent=None) + "\n")
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter_name!r}: use otlp, console or none")
    trace.set_tracer_provider(provider)
    # HTTP views only: WebSocket routes never reach Django's request handler,
    # so the consumers' own spans are not doubled.
    DjangoInstrumentor().instrument(tracer_provider=provider)
    return provider
