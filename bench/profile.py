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

PACKAGES = (
    "wsmonitor", "prometheus_client", "structlog", "opentelemetry", "channels", "daphne",
    "autobahn", "twisted", "asyncio", "django", "logging",
)


def summarise(collapsed_path, top):
    inclusive, leaves, total = collections.Counter(), collections.Counter(), 0
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
    return {
        "samples": total,
        "inclusive_share": {p: round(inclusive[p] / total, 3) for p in PACKAGES if total},
        "top_self": [(frame, round(n / total, 3)) for frame, n in leaves.most_common(top)] if total else [],
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
    config = dict(run.FULL, client="raw")
    with run.Server(args.variant) as server:
        recorder = subprocess.Popen(
            [py_spy, "record", "--format", "raw", "--rate", str(args.rate), "--nonblocking", "--gil",
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
    print("hottest leaf functions (self time):")
    for frame, share in profile["top_self"]:
        print(f"  {share:6.1%}  {frame}")


if __name__ == "__main__":
    main()
