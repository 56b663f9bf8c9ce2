"""The lock-free histogram values give exactly what prometheus_client's observe() gives."""

import threading

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from wsmonitor import histograms

BUCKETS = (16, 64, 256, 1024, 4096)
amounts = st.floats(min_value=0, max_value=10_000, allow_nan=False) | st.sampled_from(BUCKETS)


def pair():
    registry = CollectorRegistry()
    plain = Histogram("plain", "h", ("l",), buckets=BUCKETS, registry=registry).labels("x")
    fast = Histogram("fast", "h", ("l",), buckets=BUCKETS, registry=registry).labels("x")
    return plain, fast


def samples(child):
    return [(s.name.split("_")[-1], s.labels.get("le"), s.value, s.exemplar)
            for s in child._child_samples() if not s.name.endswith("created")]


@given(before=st.lists(amounts, max_size=20), owned=st.lists(amounts, max_size=60),
       foreign=st.lists(amounts, max_size=30), exemplars=st.lists(amounts, max_size=5))
@settings(max_examples=150, deadline=None)
def test_same_values_as_observe_with_scrapes_and_other_threads(before, owned, foreign, exemplars):
    plain, fast = pair()
    for amount in before:  # observed before the swap: carried over
        plain.observe(amount)
        fast.observe(amount)
    observe = histograms.observer(fast)
    assert observe is not fast.observe

    stop = threading.Event()
    scraped = []

    def scrape():  # a concurrent /metrics: reads never block or break the writer
        while not stop.is_set():
            scraped.append(samples(fast))

    def other_thread():
        for amount in foreign:
            observe(amount)

    reader = threading.Thread(target=scrape)
    writer = threading.Thread(target=other_thread)
    reader.start()
    writer.start()
    for amount in owned:
        observe(amount)
    writer.join()
    stop.set()
    reader.join()
    for n, amount in enumerate(exemplars):  # exemplars: through observe() and the observer
        (fast.observe if n % 2 else observe)(amount, {"trace_id": "a" * 32})
    for amount in owned + foreign:
        plain.observe(amount)
    for amount in exemplars:
        plain.observe(amount, {"trace_id": "a" * 32})

    got, want = samples(fast), samples(plain)
    assert [s[:2] for s in got] == [s[:2] for s in want]
    counts = {(kind, le): value for kind, le, value, _ in got}
    expected = {(kind, le): value for kind, le, value, _ in want}
    for key, value in expected.items():
        if key[0] == "sum" and foreign:
            # Another thread's sum is kept apart and added at read time, so the float
            # additions group differently: equal up to rounding.
            assert abs(counts[key] - value) <= 1e-9 * max(1.0, abs(value))
        else:
            assert counts[key] == value, key
    # The same exemplars on the same buckets (labels and value; each has its own timestamp).
    assert [s[3] and s[3][:2] for s in got] == [s[3] and s[3][:2] for s in want]
    for snapshot in scraped:  # every concurrent read was a consistent prefix
        count = dict(((kind, le), value) for kind, le, value, _ in snapshot)[("count", None)]
        assert count <= len(before) + len(owned) + len(foreign)


def test_swapping_twice_keeps_one_set_of_values():
    _, fast = pair()
    first = histograms.observer(fast)
    second = histograms.observer(fast)
    first(10)
    second(100)
    assert fast._sum.get() == 110
    assert [b.get() for b in fast._buckets] == [1, 0, 1, 0, 0, 0]


def test_values_it_cannot_read_fall_back_to_observe():
    class Odd:
        def observe(self, amount):
            pass

    odd = Odd()
    assert histograms.observer(odd) == odd.observe


def test_a_bucket_takes_a_new_exemplar_at_most_once_per_interval(monkeypatch):
    _, fast = pair()
    made = []

    def exemplar_of(source):
        made.append(source)
        return None if source == "unsampled" else {"trace_id": source}

    clock = [1000.0]
    monkeypatch.setattr(histograms, "time", lambda: clock[0])
    observe = histograms.observer(fast, exemplar_of=exemplar_of, exemplar_every=1.0)
    observe(10, "unsampled")  # no labels: the bucket stays free for the next sampled one
    observe(10, "a")
    observe(10, "b")  # same bucket, same second: not even asked for labels
    observe(100, "c")  # another bucket has its own interval
    clock[0] += 1.0
    observe(10, "d")
    observe(10)  # no source: counted, no exemplar work
    assert made == ["unsampled", "a", "c", "d"]
    exemplars = {s[1]: s[3] for s in samples(fast) if s[0] == "bucket" and s[3]}
    assert exemplars["16.0"].labels == {"trace_id": "d"} and exemplars["16.0"].value == 10
    assert exemplars["256.0"].labels == {"trace_id": "c"}
    assert [b.get() for b in fast._buckets] == [5, 0, 1, 0, 0, 0]
