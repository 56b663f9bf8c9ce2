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
