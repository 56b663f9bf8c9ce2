"""Every private internal wsmonitor reads from another library, guarded, with the versions
it was tested on.

Each accessor checks the structure it relies on the first time it is used. When that
structure is not what it expects (a release renamed an attribute, changed a type), the
accessor returns None and logs one warning naming the library and its version, and the
feature that needed it switches itself off (or falls back to the public API) instead of
counting wrong. ``startup_problems()`` compares the installed versions with ``TESTED``;
``wsmonitor.W004`` and the app's start-up log report them.
"""

import logging
import math
from importlib import metadata

logger = logging.getLogger("wsmonitor")

#: Distribution name -> (oldest tested, newest tested) versions. CI's version matrix
#: (scripts/matrix.sh) runs the fast suite at both ends; a "newest" of "5.2" covers 5.2.x.
TESTED = {
    "Django": ("5.2", "5.2"),
    "channels": ("4.3.0", "4.3"),
    "channels-redis": ("4.0.0", "4.3"),
    "redis": ("4.6.0", "8.1"),
    "prometheus-client": ("0.14.1", "0.26"),
    "structlog": ("21.5.0", "26.1"),
    "opentelemetry-api": ("1.27.0", "1.45"),
    "daphne": ("4.0.0", "4.2"),
    "Twisted": ("22.4.0", "26.10"),
}

#: What each library's private internals are used for, said in the warnings.
USES = {
    "prometheus-client": "the per-message histograms (Histogram child _sum, _buckets, "
                         "_upper_bounds)",
    "Twisted": "ws_send_backlog_* (transport dataBuffer, offset, _tempDataLen)",
}

_warned = set()


def installed_version(distribution):
    """The installed version of ``distribution``, or None."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _release(version):
    """``"4.3.2rc1"`` -> ``(4, 3, 2)``: the leading numeric release segments."""
    numbers = []
    for part in version.split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if len(digits) != len(part):
            break
    return tuple(numbers)


def version_problem(distribution, version, tested=None):
    """A sentence when ``version`` lies outside the tested range, else None."""
    oldest, newest = tested or TESTED[distribution]
    release = _release(version)
    if release < _release(oldest):
        return (f"{distribution} {version} is older than the oldest version wsmonitor is "
                f"tested with ({oldest}).")
    newest_release = _release(newest)
    if release[:len(newest_release)] > newest_release:
        return (f"{distribution} {version} is newer than the newest version wsmonitor is "
                f"tested with ({newest}.x): metrics that read its internals may be off, "
                "and switch themselves off when they notice.")
    return None


def startup_problems():
    """Sentences for each installed dependency outside its tested range."""
    problems = []
    for distribution in TESTED:
        version = installed_version(distribution)
        if version is not None:
            problem = version_problem(distribution, version)
            if problem:
                problems.append(problem)
    return problems


def disable(distribution, reason):
    """Log once that a feature relying on ``distribution``'s internals is off, and why."""
    if distribution in _warned:
        return
    _warned.add(distribution)
    version = installed_version(distribution) or "?"
    logger.warning(
        "wsmonitor: %s %s is not as expected (%s); %s switched off. Tested versions: %s to %s.",
        distribution, version, reason, USES.get(distribution, "the feature"),
        *TESTED.get(distribution, ("?", "?")))


# --- prometheus_client ---------------------------------------------------------------------

_histogram_ok = None


def _histogram_internals_work():
    """Observe through the internals on a private Histogram and compare with what it exports."""
    from prometheus_client import CollectorRegistry, Histogram

    histogram = Histogram("wsmonitor_compat_probe", "probe", buckets=(1, 2),
                          registry=CollectorRegistry())
    parts = _histogram_parts(histogram)
    if parts is None:
        return False
    total, buckets, bounds = parts
    for amount in (0.5, 1, 1.5, 3):
        total.inc(amount)
        buckets[_bucket(bounds, amount)].inc(1)
    samples = {(s.name, s.labels.get("le")): s.value
               for metric in histogram.collect() for s in metric.samples}
    return samples.get(("wsmonitor_compat_probe_sum", None)) == 6.0 and [
        samples.get(("wsmonitor_compat_probe_bucket", le)) for le in ("1.0", "2.0", "+Inf")
    ] == [2.0, 3.0, 4.0]


def _bucket(bounds, amount):
    from bisect import bisect_left

    return bisect_left(bounds, amount)


def _histogram_parts(child):
    try:
        total, buckets, bounds = child._sum, child._buckets, tuple(child._upper_bounds)
        if not (callable(total.inc) and len(buckets) == len(bounds) and bounds
                and bounds[-1] == math.inf and all(callable(b.inc) for b in buckets)):
            return None
    except (AttributeError, TypeError):
        return None
    return total, buckets, bounds


def histogram_parts(child):
    """``(sum value, bucket values, upper bounds)`` of a prometheus_client Histogram child,
    for observing without ``observe``'s overhead; None (logged once) when the client's
    internals are not what wsmonitor was tested with: then use ``child.observe``."""
    global _histogram_ok
    if _histogram_ok is None:
        try:
            _histogram_ok = _histogram_internals_work()
        except Exception:  # any surprise in another library's internals: use the public API
            _histogram_ok = False
        if not _histogram_ok:
            disable("prometheus-client", "a Histogram's _sum/_buckets/_upper_bounds")
    if not _histogram_ok:
        return None
    parts = _histogram_parts(child)
    if parts is None:
        disable("prometheus-client", "a Histogram child's _sum/_buckets/_upper_bounds")
    return parts


# --- Twisted -------------------------------------------------------------------------------

def _pending(transport):
    # twisted.internet.abstract.FileDescriptor keeps what the kernel did not take yet in
    # dataBuffer (from offset on) and _tempDataBuffer (_tempDataLen bytes).
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def twisted_pending_bytes(transport):
    """Bytes a Twisted transport holds that the kernel has not taken yet; None (logged once)
    when the transport is not shaped as tested: then the send-backlog gauges are off."""
    try:
        pending = _pending(transport)
        if type(pending) is not int or pending < 0:
            raise TypeError(f"pending bytes {pending!r}")
    except (AttributeError, TypeError) as exc:
        disable("Twisted", f"transport.dataBuffer/offset/_tempDataLen: {exc}")
        return None
    return pending
