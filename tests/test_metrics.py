"""wsmonitor's cheaper histogram observer adds exactly what prometheus_client's observe adds."""

import math

from prometheus_client import CollectorRegistry, Histogram

from wsmonitor.metrics import SIZE_BUCKETS, MessagesCollector, observer


def samples(registry):
    return sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                  for family in registry.collect() for s in family.samples
                  if not s.name.endswith("_created"))


def test_observer_matches_observe_on_every_boundary():
    values = [0, 1, 15.999, 16, 16.0001, 64, 1000, 4194304, 4194305, 5e9, math.inf, -1]
    values += [bound for bound in SIZE_BUCKETS] + [bound + 0.5 for bound in SIZE_BUCKETS]
    registries = []
    for fast in (False, True):
        registry = CollectorRegistry()
        child = Histogram("h", "h", ["l"], registry=registry, buckets=SIZE_BUCKETS).labels("x")
        observe = observer(child) if fast else child.observe
        assert hasattr(observe, "__self__") is not fast  # the fast path, not the fallback
        for value in values:
            observe(value)
        registries.append(registry)
    assert samples(registries[0]) == samples(registries[1])


def test_messages_total_is_the_size_histograms_count():
    registry = CollectorRegistry()
    sizes = Histogram("ws_message_size_bytes", "s", ["consumer", "node", "direction"],
                      registry=registry, buckets=SIZE_BUCKETS)
    for direction, count in (("in", 3), ("out", 5)):
        child = observer(sizes.labels("C", "n", direction))
        for _ in range(count):
            child(10)
    registry.register(MessagesCollector(sizes.collect))
    got = {s.labels["direction"]: s.value for family in registry.collect()
           if family.name == "ws_messages" for s in family.samples}
    assert got == {"in": 3, "out": 5}
