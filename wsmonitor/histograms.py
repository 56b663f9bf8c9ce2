"""Lock-free values for the per-message histograms of one server process.

prometheus_client guards every bucket and sum with a mutex, so one observation
takes two locks. Every per-message observation of wsmonitor happens on the
thread that runs the server's event loop (sync consumers' handlers run in a
worker thread, but their receives and sends are counted on the loop), so a
single writer can add without locks while a scrape, on another thread, reads.

:func:`observer` swaps a histogram child's bucket and sum values for views of
two plain lists that the returned function adds to. The child keeps working as
before for everything else: ``observe()`` (with exemplars), ``collect()``, and
the ``_created`` sample. An observation made on any other thread takes a lock
and adds to lists of its own, so no update is ever lost; a scrape reads both.
Multiprocess mode keeps prometheus_client's file-backed values.
"""

import threading
from bisect import bisect_left
from time import time

from prometheus_client.samples import Exemplar

__all__ = ["observer"]


class _Shared:
    """The counts and sum of one child: ``owned`` by one thread, ``foreign`` under a lock."""

    __slots__ = ("owner", "counts", "total", "foreign_counts", "foreign_total", "lock")

    def __init__(self, buckets, total):
        self.owner = threading.get_ident()
        self.counts = list(buckets)
        self.total = [total]
        self.foreign_counts = [0.0] * len(buckets)
        self.foreign_total = [0.0]
        self.lock = threading.Lock()

    def add(self, index, amount):
        """Add ``amount`` to bucket ``index`` (None: the sum) from any thread."""
        if threading.get_ident() == self.owner:
            if index is None:
                self.total[0] += amount
            else:
                self.counts[index] += amount
            return
        with self.lock:
            if index is None:
                self.foreign_total[0] += amount
            else:
                self.foreign_counts[index] += amount


class _Value:
    """Duck-types ``prometheus_client.values.MutexValue`` over one slot of a :class:`_Shared`."""

    __slots__ = ("shared", "index", "_exemplar")

    def __init__(self, shared, index, exemplar):
        self.shared, self.index, self._exemplar = shared, index, exemplar

    def inc(self, amount):
        self.shared.add(self.index, amount)

    def get(self):
        shared, index = self.shared, self.index
        if index is None:
            return shared.total[0] + shared.foreign_total[0]
        return shared.counts[index] + shared.foreign_counts[index]

    def set(self, value, timestamp=None):
        raise TypeError("a histogram value is only ever incremented")

    def set_exemplar(self, exemplar):
        self._exemplar = exemplar  # one reference assignment: atomic

    def get_exemplar(self):
        return self._exemplar


def lock_free(child):
    """Swap ``child``'s values for lock-free ones (once); return its :class:`_Shared`, or None.

    None when the child's internals are not prometheus_client's in-process
    histogram child (multiprocess mode, or a version that changed them).
    """
    try:
        buckets, total, bounds = child._buckets, child._sum, child._upper_bounds
    except AttributeError:
        return None
    if isinstance(total, _Value):
        return total.shared
    if getattr(total, "_multiprocess", True) or len(buckets) != len(bounds):
        return None
    try:
        shared = _Shared([value.get() for value in buckets], total.get())
        values = [_Value(shared, i, value.get_exemplar()) for i, value in enumerate(buckets)]
        total_value = _Value(shared, None, None)
    except AttributeError:
        return None
    # Swapped while this thread is the only writer: nothing observed in between is lost.
    child._buckets[:] = values
    child._sum = total_value
    return shared


def observer(child, exemplar_of=None, exemplar_every=0.0):
    """A cheap ``child.observe(amount, exemplar=None)``, adding lock-free on the calling thread.

    An exemplar is stored as ``observe()`` stores it, on the bucket the amount falls in, but
    not validated: callers pass wsmonitor's own trace and span IDs, well inside OpenMetrics'
    128-character limit. With ``exemplar_of``, the second argument is what it makes the
    exemplar's labels from (or None, for no exemplar), called only when the bucket takes a
    new exemplar: at most once per ``exemplar_every`` seconds per bucket (a scrape exports one
    per bucket; building one per message would be work for nothing). Falls back to
    ``child.observe`` when the child cannot be made lock-free.
    """
    shared = lock_free(child)
    if shared is None:
        return public_observe(child, exemplar_of)
    bounds = tuple(child._upper_bounds)
    values = tuple(child._buckets)
    last = [float("-inf")] * len(values)  # when each bucket last took an exemplar

    def observe(amount, exemplar=None, _counts=shared.counts, _total=shared.total,
                _owner=shared.owner, _bounds=bounds, _find=bisect_left,
                _ident=threading.get_ident, _add=shared.add):
        index = _find(_bounds, amount)
        if _ident() == _owner:
            _total[0] += amount
            _counts[index] += 1
        else:
            _add(None, amount)
            _add(index, 1)
        if exemplar is not None:
            now = time()
            if now - last[index] >= exemplar_every:
                labels = exemplar if exemplar_of is None else exemplar_of(exemplar)
                if labels is not None:
                    last[index] = now  # a race with another thread only shifts the interval
                    values[index].set_exemplar(Exemplar(labels, amount, now))

    return observe


def public_observe(child, exemplar_of=None):
    """``child.observe`` itself (prometheus_client's locks, an exemplar on every call), taking
    what :func:`observer` takes."""
    if exemplar_of is None:
        return child.observe

    def observe(amount, source=None):
        child.observe(amount, None if source is None else exemplar_of(source))

    return observe
