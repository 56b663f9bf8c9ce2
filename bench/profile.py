"""Profile one variant's daphne under the echo load with py-spy: ``python -m bench.profile VARIANT``.

Samples daphne with ``py-spy record --format raw`` (collapsed stacks) while the load generator runs
the echo burst, then prints where the server's time goes: the share of samples whose stack passes
through each package of interest (inclusive), and the hottest leaf functions (self time). Needs
py-spy (``pip install py-spy``) and ptrace rights on the daphne process (root, or
kernel.yama.ptrace_scope = 0).
"""

import argparse
import collections
import json
import shutil
import signal
import subprocess
import sys
import time

from bench import run

#: Instrumentation whose own cost is attributed: samples whose deepest frame from one of these
#: packages has no server or application frame below it (so what it called, e.g.
#: prometheus_client, structlog, uuid, locks, counts as its cost, and the consumer it wraps doesn't).
INSTRUMENTATION = ("wsmonitor", "opentelemetry")
SERVER_CODE = ("channels", "daphne", "autobahn", "twisted", "asgiref", "bench/benchproject")

PACKAGES = (
    "wsmonitor", "prometheus_client", "structlog", "opentelemetry", "channels", "daphne",
    "autobahn", "twisted", "asyncio", "django", "logging",
)


def _in(frame, package):
    location = frame.rpartition(" (")[2]
    return location.startswith(package + "/") or f"/{package}/" in location


def _own_cost(frames):
    """Return the instrumentation package this sample's time belongs to, or None."""
    for depth in range(len(frames) - 1, -1, -1):
        for package in INSTRUMENTATION:
            if _in(frames[depth], package):
                below = frames[depth + 1 :]
                if not any(_in(f, server) for f in below for server in SERVER_CODE):
                    return package
                return None
    return None


def summarise(collapsed_path, top):
    inclusive, leaves, own, callees, total = (collections.Counter(), collections.Counter(),
                                              collections.Counter(), collections.Counter(), 0)
    with open(collapsed_path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            count = int(count)
            total += count
            frames = stack.split(";")
            seen = set()
            for frame in frames:
                for package in PACKAGES:
                    if package not in seen and (f"/{package}/" in frame or f"{package}/" in frame.split(" (")[-1]):
                        seen.add(package)
            for package in seen:
                inclusive[package] += count
            leaves[frames[-1]] += count
            owner = _own_cost(frames)
            if owner:
                own[owner] += count
                # Name the cost by the first frame below the instrumentation's own code.
                for depth, frame in enumerate(frames):
                    if _in(frame, owner):
                        last = depth
                callee = frames[last + 1].rpartition(" (")[0] if last + 1 < len(frames) else "(self)"
                callees[f"{frames[last]} > {callee}"] += count
    return {
        "samples": total,
        "inclusive_share": {p: round(inclusive[p] / total, 3) for p in PACKAGES if total},
        "top_self": [(frame, round(n / total, 3)) for frame, n in leaves.most_common(top)] if total else [],
        "own_cost_share": {p: round(own[p] / total, 3) for p in INSTRUMENTATION} if total else {},
        "own_cost_top": [(stack, round(n / total, 3)) for stack, n in callees.most_common(top)] if total else [],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.splitlines()[0])
    parser.add_argument("variant")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(run.Path(sys.executable).with_name("py-spy"))
    out = run.RESULTS / f"profile-{args.variant}.collapsed.tmp"
    config = dict(run.FULL, client="websockets")
    with run.Server(args.variant) as server:
        recorder = subprocess.Popen(
            [py_spy, "record", "--format", "raw", "--rate", str(args.rate), "--gil",
             "--pid", str(server.process.pid), "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        echo = run.loadgen("echo", server, config, connections=args.connections, messages=args.messages,
                           size=100, warmup=5)
        recorder.send_signal(signal.SIGINT)
        recorder.wait(timeout=30)
    profile = summarise(out, args.top)
    json.dump({"variant": args.variant, "echo": echo, "profile": profile}, sys.stderr)
    sys.stderr.write("\n")
    if "error" in echo:
        print(f"echo failed: {echo['error']}")
    else:
        print(f"{args.variant}: {echo['msgs_per_s']:.0f} msg/s, {echo['server_cpu_us_per_msg']:.0f} us/msg "
              f"(under py-spy), {profile['samples']} samples")
    print("inclusive share of samples by package:")
    for package, share in sorted(profile["inclusive_share"].items(), key=lambda kv: -kv[1]):
        print(f"  {share:6.1%}  {package}")
    if "error" not in echo:
        messages = echo["messages"] + args.connections * 5
        print(f"GIL-held samples per 1,000 messages: {profile['samples'] / messages * 1000:.1f} "
              f"(x {1e6 / args.rate:.0f} us = {profile['samples'] / messages * 1e6 / args.rate:.0f} us/msg)")
    for package, share in profile["own_cost_share"].items():
        if share:
            print(f"own cost of {package} (it and what it calls, not the code it wraps): {share:.1%}")
    for stack, share in profile["own_cost_top"]:
        print(f"  {share:6.1%}  {stack}")
    print("hottest leaf functions (self time):")
    for frame, share in profile["top_self"]:
        print(f"  {share:6.1%}  {frame}")


if __name__ == "__main__":
    main()
