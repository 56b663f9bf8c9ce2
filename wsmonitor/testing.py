"""Helpers to test metrics in your own test suite.

    before = MetricsSnapshot.collect()
    ...  # drive your consumer with channels' WebsocketCommunicator
    assert_metric_diff(before, "ws_closes_total", 1, consumer="ChatConsumer", code="1000")
"""

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families


class MetricsSnapshot:
    """Sample values at one moment, from the registry or a scraped /metrics page."""

    def __init__(self, families):
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in families for sample in family.samples
        ]

    @classmethod
    def collect(cls, registry=REGISTRY):
        return cls(registry.collect())

    @classmethod
    def parse(cls, text):
        return cls(text_string_to_metric_families(text))

    def value(self, name, **labels):
        """Sum of the samples named ``name`` whose labels include ``labels``."""
        return sum(
            value for sample_name, sample_labels, value in self.samples
            if sample_name == name
            and all(sample_labels.get(key) == str(val) for key, val in labels.items())
        )

    def label_values(self, name, label):
        """The distinct values ``label`` takes in the samples named ``name``."""
        return {labels[label] for sample_name, labels, _ in self.samples
                if sample_name == name and label in labels}


def metric_diff(before, name, after=None, **labels):
    """Change of ``name`` (matching ``labels``) since ``before``; ``after`` defaults to now."""
    after = after or MetricsSnapshot.collect()
    return after.value(name, **labels) - before.value(name, **labels)


def assert_metric_diff(before, name, expected, after=None, **labels):
    """Assert ``name`` changed by ``expected`` since ``before``, with a readable message."""
    actual = metric_diff(before, name, after, **labels)
    if actual != expected:
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        raise AssertionError(
            f"{name}{{{selector}}} changed by {actual:g}, expected {expected:g}"
        )


_exporter = None


def span_exporter():
    """An in-memory exporter on an SDK TracerProvider installed once for the process, emptied.

    Use it as a pytest fixture body; wsmonitor traces with whatever provider is global.
    """
    global _exporter
    if _exporter is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        _exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
        if trace.get_tracer_provider() is not provider:
            raise RuntimeError("another TracerProvider is installed already")
    _exporter.clear()
    return _exporter
