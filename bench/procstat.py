"""CPU time and resident memory of another process, read from /proc (Linux only)."""

import os
import time

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """Return user + system CPU seconds used so far by process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def rss_bytes(pid):
    """Return the resident set size of process `pid` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def wait_quiet(pid, *, below=0.05, interval=0.2, timeout=10.0):
    """Wait until process `pid` uses less than `below` of a core over `interval`; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = cpu_seconds(pid)
        if now - last < below * interval:
            return True
        last = now
    return False


def system_busy_seconds():
    """Return (busy, steal) CPU seconds of the whole machine so far, all cores added up."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


def wait_machine_quiet(*, below=0.25, interval=1.0, timeout=15.0):
    """Wait until the whole machine uses less than `below` cores over `interval`; bounded.

    Returns the load (cores) last seen: other processes on a shared machine (tests, browsers) take
    CPU from daphne and the load generator and skew a round.
    """
    deadline = time.monotonic() + timeout
    load = None
    while True:
        before = system_busy_seconds()[0]
        time.sleep(interval)
        load = (system_busy_seconds()[0] - before) / interval
        if load < below or time.monotonic() >= deadline:
            return load
