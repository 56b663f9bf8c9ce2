"""prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``) under daphne.

Several daphne processes on one host write their values to files in one
directory; the scraped process aggregates them. Two things daphne lacks:

* nobody calls ``prometheus_client.multiprocess.mark_process_dead``: :func:`sweep`
  removes the live-gauge files of processes that no longer exist, at start-up and
  at every scrape through :func:`wsmonitor.views.metrics`, so a killed process's
  connections leave ``ws_connections_active``;
* the default ``process_*`` collectors are not exported: each process marks
  itself with ``ws_process_start_time_seconds`` (a ``liveall`` gauge, so it has a
  live-gauge file), and :class:`ProcessFdsCollector` reports ``ws_process_open_fds``
  / ``ws_process_max_fds`` for every live process with such a file, read from
  ``/proc`` at scrape time.
"""

import os
import re
import time

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import mark_process_dead

_LIVE = re.compile(r"^gauge_live(?:all|sum|max|min|mostrecent)_(\d+)\.db$")


def directory():
    """The multiprocess directory, or None outside multiprocess mode."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def alive(pid):
    """Whether ``pid`` is a running process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: trust kill()
    return state not in (b"Z", b"X")


def start(node):
    """At start-up in multiprocess mode: sweep, then mark this process as live."""
    from . import metrics

    sweep(at_startup=True)
    metrics.PROCESS_START.labels(node).set(time.time())


def pids(path):
    """Process IDs that have live-gauge files in the directory."""
    found = set()
    for name in os.listdir(path):
        match = _LIVE.match(name)
        if match:
            found.add(int(match.group(1)))
    return found


def _mapped_here(filename):
    """Whether this process has ``filename`` mapped (prometheus_client opened it)."""
    try:
        with open("/proc/self/maps") as maps:
            return any(line.rstrip("\n").endswith(filename) for line in maps)
    except OSError:
        return True  # cannot tell: keep it


def sweep(path=None, at_startup=False):
    """Drop the live-gauge files of dead processes; return their pids.

    At start-up, files carrying this process's own pid are left over from a dead
    process that had the same pid; they go too unless this process already uses them.
    """
    path = path or directory()
    if not path:
        return set()
    me = os.getpid()
    dead = set()
    for name in os.listdir(path):
        match = _LIVE.match(name)
        if not match:
            continue
        pid = int(match.group(1))
        if pid == me:
            full = os.path.join(path, name)
            if at_startup and not _mapped_here(full):
                os.remove(full)
        elif pid not in dead and not alive(pid):
            mark_process_dead(pid, path)
            dead.add(pid)
    return dead


def _open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def _max_fds(pid):
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return float(line.split()[3])
    raise OSError("no open-files limit")


class ProcessFdsCollector:
    """Open and maximum file descriptors of every live process writing to the directory."""

    def __init__(self, path, node):
        self.path, self.node = path, node

    def collect(self):
        open_fds = GaugeMetricFamily(
            "ws_process_open_fds", "Open file descriptors per process (multiprocess mode).",
            labels=("node", "pid"))
        max_fds = GaugeMetricFamily(
            "ws_process_max_fds", "Maximum open file descriptors per process (multiprocess mode).",
            labels=("node", "pid"))
        for pid in sorted(pids(self.path)):
            if not alive(pid):
                continue
            try:
                opened, limit = _open_fds(pid), _max_fds(pid)
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile, or not ours to read
            open_fds.add_metric((self.node, str(pid)), opened)
            max_fds.add_metric((self.node, str(pid)), limit)
        yield open_fds
        yield max_fds
