"""An SDK TracerProvider whose spans go through a BatchSpanProcessor to an exporter that drops them."""

import os
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased


class DiscardingExporter(SpanExporter):
    """Count the spans it is given and keep none of them."""

    def __init__(self):
        self.exported = 0

    def export(self, spans):
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        # Lands in the daphne log (bench/results/daphne-VARIANT.log.tmp): proof spans were made.
        print(f"bench: discarding exporter (pid {os.getpid()}) dropped {self.exported} spans", file=sys.stderr, flush=True)


def install_discarding_tracer_provider(ratio=None):
    """Set the global tracer provider: sampled (always, or ``parentbased_traceidratio``), batched,
    discarded."""
    sampler = ALWAYS_ON if ratio is None else ParentBased(TraceIdRatioBased(ratio))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(DiscardingExporter()))
    trace.set_tracer_provider(provider)
    return provider
