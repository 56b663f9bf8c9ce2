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
    "channels": ("4.2.2", "4.3"),
    "channels-redis": ("4.2.1", "4.3"),
    "redis": ("4.6.0", "8.1"),
    "prometheus-client": ("0.14.1", "0.26"),
    "structlog": ("21.5.0", "26.1"),
    "opentelemetry-api": ("1.27.0", "1.45"),
    "daphne": ("4.0.0", "4.2"),
    "Twisted": ("22.4.0", "26.10"),
}

#: What each library's private internals are used for, said in the warnings.
USES = {
    "prometheus-client": "the lock-free per-message histograms (observe() is used instead)",
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


def disabled(distribution):
    """Whether a feature relying on ``distribution``'s internals has switched itself off."""
    return distribution in _warned


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
_PROBE = (0, 0.5, 1, 1.5, 2, 3, 1e9)


def _histograms_work():
    """Observe through wsmonitor.histograms and through ``observe()`` on two private
    Histograms, and compare what they export."""
    from prometheus_client import CollectorRegistry, Histogram

    from . import histograms

    registry = CollectorRegistry()
    plain, fast = (Histogram(name, "probe", buckets=(1, 2), registry=registry)
                   for name in ("wsmonitor_probe_plain", "wsmonitor_probe_fast"))
    observe = histograms.observer(fast)
    if observe == fast.observe:
        return False
    for amount in _PROBE:
        plain.observe(amount)
        observe(amount)

    def exported(histogram, prefix):
        return sorted((s.name[len(prefix):], tuple(sorted(s.labels.items())), s.value)
                      for metric in histogram.collect() for s in metric.samples
                      if not s.name.endswith("_created"))

    return (exported(plain, "wsmonitor_probe_plain") == exported(fast, "wsmonitor_probe_fast")
            and len(exported(plain, "wsmonitor_probe_plain")) == 5)


def _multiprocess():
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


def histogram_observer(child, **exemplars):
    """A cheap stand-in for ``child.observe`` (wsmonitor.histograms) when prometheus_client's
    Histogram internals (``_sum``, ``_buckets``, ``_upper_bounds``) behave as tested;
    otherwise ``child.observe`` itself, with one warning. Multiprocess mode keeps
    prometheus_client's file-backed values and ``observe``. ``exemplars``: see
    ``histograms.observer``."""
    global _histogram_ok
    from . import histograms

    if _multiprocess():
        return histograms.public_observe(child, exemplars.get("exemplar_of"))
    if _histogram_ok is None:
        try:
            _histogram_ok = _histograms_work()
        except Exception:  # any surprise in another library's internals: the public API
            _histogram_ok = False
        if not _histogram_ok:
            disable("prometheus-client", "observing through a Histogram's _sum/_buckets/"
                    "_upper_bounds did not export what observe() does")
    if not _histogram_ok:
        return histograms.public_observe(child, exemplars.get("exemplar_of"))
    if histograms.lock_free(child) is None:
        disable("prometheus-client", "a Histogram child without _sum/_buckets/_upper_bounds")
    return histograms.observer(child, **exemplars)


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


# --- channels ------------------------------------------------------------------------------

def require_valid_group_name(layer, name):
    """Raise TypeError for a group name channels refuses: ``require_valid_group_name`` from
    channels 4.3, ``valid_group_name`` (which raises the same error, deprecated since) before."""
    check = getattr(layer, "require_valid_group_name", None) or layer.valid_group_name
    return check(name)


def channels_dispatch_inlinable(dispatch):
    """Whether ``dispatch``, the next one after wsmonitor's in a consumer's MRO, is channels'
    own ``AsyncConsumer.dispatch`` as tested: it looks up ``get_handler_name(message)``,
    awaits ``channels.consumer.aclose_old_connections()``, then the handler. Then the receive
    path may do the same in its own frame (one coroutine fewer per message); otherwise, and
    outside the tested versions, it calls ``super().dispatch``."""
    from channels import consumer

    if dispatch is not consumer.AsyncConsumer.dispatch:
        return False  # a mixin or the project overrides it: call it
    version = installed_version("channels")
    try:
        return (version is not None and version_problem("channels", version) is None
                and {"get_handler_name", "aclose_old_connections"}
                <= set(dispatch.__code__.co_names)
                and callable(consumer.aclose_old_connections)
                and consumer.get_handler_name({"type": "websocket.receive"}) == "websocket_receive")
    except Exception:  # any surprise in another library's internals: its own dispatch
        return False
