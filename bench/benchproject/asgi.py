"""ASGI entry point: the same echo routed through the variant named by env BENCH_VARIANT."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.benchproject.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from bench import variants  # noqa: E402
from bench.benchproject import consumers  # noqa: E402

VARIANT = settings.VARIANT

if VARIANT in ("tracing", "tracing-10", "otel-asgi"):
    # Imported here: the plain and metrics variants must run without the OpenTelemetry SDK installed.
    from bench.benchproject.tracing import install_discarding_tracer_provider

    install_discarding_tracer_provider(0.1 if VARIANT == "tracing-10" else None)

routes = []
if VARIANT in ("metrics", "tracing", "tracing-10", variants.MIXED_VARIANT):
    consumer = consumers.instrumented_echo()
elif VARIANT in ("layer-plain", "layer-instrumented"):
    consumer = consumers.instrumented_fanout() if settings.FANOUT_INSTRUMENTED_CONSUMER else consumers.PlainFanout
else:
    consumer = consumers.PlainEcho

if VARIANT == variants.MIXED_VARIANT:
    routes.append(path(variants.MIXED_PATHS["plain"].strip("/") + "/", consumers.PlainEcho.as_asgi()))
websocket_app = URLRouter([path("ws/echo/", consumer.as_asgi()), *routes])

if VARIANT == "otel-asgi":
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    websocket_app = OpenTelemetryMiddleware(websocket_app)

application = ProtocolTypeRouter({"http": django_asgi_app, "websocket": websocket_app})

if os.environ.get("BENCH_GC_FREEZE"):
    # The process-level knob docs/benchmarks.md measures: everything loaded at start-up leaves
    # the collector's generations, so full collections stop walking it.
    import gc

    gc.collect()
    gc.freeze()
