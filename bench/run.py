"""Benchmark runner: ``python -m bench`` (``--quick`` for a smoke run, ``--help`` for the knobs).

daphne is pinned to one CPU and the load generator to another (BENCH_NO_PIN=1 turns it off):
channels hops to a thread per message, and without pinning that hop costs more or less CPU
depending on whether another core happens to be idle. Each round starts one fresh daphne per
variant, in the same order every round (plain, metrics, tracing-10, tracing, otel-asgi), measures
echo throughput (and, in the first ``--idle-rounds`` rounds, idle memory and /metrics scrapes on the
same process), and stops it; then one daphne serving the plain and the instrumented consumer side
by side is loaded on each path in turn; then the fan-out variants run over real Redis. Every
variant is judged by the ratio of the baseline's server CPU per message to its own in the same
round (the median over rounds, with the interquartile range), because numbers on these machines
drift by +-20 % between runs.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

from bench import procstat, report, variants

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DEFAULT_JSON = RESULTS / "latest.json"
DEFAULT_MARKDOWN = ROOT / "docs" / "benchmarks.md"

FULL = dict(
    rounds=12, connections=50, messages=200, size=100, warmup=5, idle=10_000, idle_rounds=3,
    scrapes=10, fanout_connections=20, fanout_messages=20, timeout=120.0, quiet_wait=4.0,
)
QUICK = dict(
    rounds=1, connections=5, messages=20, size=100, warmup=2, idle=50, idle_rounds=1, scrapes=3,
    fanout_connections=5, fanout_messages=5, timeout=20.0, quiet_wait=0.0,
)
#: File descriptors the server and the load generator may hold: 10,000 idle sockets each.
OPEN_FILES = 30_000

VERSIONED = (
    "daphne", "channels", "channels_redis", "redis", "Django", "django-prometheus",
    "prometheus_client", "structlog", "opentelemetry-api", "opentelemetry-sdk",
    "opentelemetry-instrumentation-asgi", "Twisted", "autobahn", "websockets",
)


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cpus():
    """(server CPU, client CPU) to pin to, or (None, None) when pinning is off or impossible."""
    if os.environ.get("BENCH_NO_PIN") or not hasattr(os, "sched_getaffinity"):
        return None, None
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return allowed[0], allowed[1]


def _pinned(cpu):
    """A preexec_fn pinning the child to `cpu` (threads it starts later inherit it) and letting
    it hold OPEN_FILES sockets."""

    def setup():
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})

    return setup


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(variant):
    env = dict(os.environ)
    env.update(
        BENCH_VARIANT=variant,
        DJANGO_SETTINGS_MODULE="bench.benchproject.settings",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    return env


class Server:
    """One daphne process for one variant, on a free loopback port."""

    def __init__(self, variant):
        self.variant = variant
        self.port = free_port()
        self.process = None
        self.log_path = RESULTS / f"daphne-{variant}.log.tmp"

    @property
    def ws_url(self):
        return self.ws_url_for("/ws/echo/")

    def ws_url_for(self, path):
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def metrics_url(self):
        return f"http://127.0.0.1:{self.port}/metrics"

    def __enter__(self):
        command = [
            sys.executable, "-m", "daphne", "-v", "0", "-b", "127.0.0.1", "-p", str(self.port),
            "bench.benchproject.asgi:application",
        ]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=server_env(self.variant), stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=_pinned(_cpus()[0]),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne ({self.variant}) exited {self.process.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
                    response.read()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError(f"daphne ({self.variant}) not ready after 30 s: {self.tail()}")

    def __exit__(self, *exc):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def tail(self, chars=1500):
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def loadgen(mode, server, config, **extra):
    """Run the load generator in its own process against `server`; return its JSON result."""
    options = dict(url=server.ws_url, pid=server.process.pid, timeout=config["timeout"],
                   client=config["client"])
    options.update(extra)
    command = [sys.executable, "-m", "bench.loadgen", mode]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    completed = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=config["timeout"] * 2 + 60,
        env=dict(os.environ, PYTHONPATH=str(ROOT)), preexec_fn=_pinned(_cpus()[1]),
    )
    try:
        return json.loads(completed.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"loadgen {mode} exited {completed.returncode}: {completed.stderr[-1500:]}"}


def probe(variant):
    """Return (available, reason) for `variant`, checked in a child process."""
    if variant in variants.FANOUT_VARIANTS:
        try:
            socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
        except OSError as exc:
            return False, f"Redis not reachable on 127.0.0.1:6379 ({exc})"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.probe", variant], cwd=ROOT, env=server_env(variant),
        capture_output=True, text=True, timeout=60,
    )
    if completed.returncode == 0:
        return True, None
    if completed.returncode == 3:
        return False, completed.stdout.strip().removeprefix("unavailable: ")
    return False, f"probe failed: {completed.stderr.strip()[-600:]}"


def _gc_stats(server):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/gc/", timeout=10) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _echo(server, config, **extra):
    """One echo burst, with the server's garbage-collection time around it (the whole run:
    handshakes, warm-up and closes included, against the burst's message count)."""
    before = _gc_stats(server)
    result = loadgen("echo", server, config, connections=config["connections"],
                     messages=config["messages"], size=config["size"], warmup=config["warmup"],
                     **extra)
    after = _gc_stats(server)
    if before and after and result.get("messages"):
        result["gc_us_per_msg"] = [(b - a) / result["messages"] * 1e6
                                   for a, b in zip(before["seconds"], after["seconds"])]
        result["gc_collections"] = [b - a for a, b in zip(before["collections"], after["collections"])]
        result["gc_tracked_objects"] = after["tracked_objects"]
    return result


def run_echo_variant(variant, config, with_idle=True):
    machine_load = procstat.wait_machine_quiet(timeout=config["quiet_wait"]) if config["quiet_wait"] else None
    with Server(variant) as server:
        echo = _echo(server, config)
        idle = loadgen(
            "idle", server, config, idle=config["idle"], scrapes=config["scrapes"],
            metrics_url=server.metrics_url,
        ) if with_idle else None
    echo["machine_load_before_cores"] = machine_load
    return echo, idle


def run_mixed(config, number):
    """One daphne, both consumers: load the plain path and the instrumented one in turn
    (alternating which goes first, round by round)."""
    if config["quiet_wait"]:
        procstat.wait_machine_quiet(timeout=config["quiet_wait"])
    order = list(variants.MIXED_PATHS.items())
    if number % 2 == 0:
        order.reverse()
    with Server(variants.MIXED_VARIANT) as server:
        return {kind: _echo(server, config, url=server.ws_url_for(path)) for kind, path in order}


def run_fanout_variant(variant, config):
    if config["quiet_wait"]:
        procstat.wait_machine_quiet(timeout=config["quiet_wait"])
    with Server(variant) as server:
        return loadgen(
            "fanout", server, config, connections=config["fanout_connections"],
            messages=config["fanout_messages"], size=config["size"],
        )


def machine():
    info = {"nproc": os.cpu_count(), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    except OSError:
        pass
    return info


def versions():
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    try:
        import wsmonitor

        found["wsmonitor"] = getattr(wsmonitor, "__version__", "?")
    except ImportError:
        found["wsmonitor"] = None
    try:
        found["wsmonitor (git)"] = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True,
            timeout=10,
        ).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        found["wsmonitor (git)"] = None
    return found


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    result = {"min": min(values), "median": statistics.median(values), "max": max(values),
              "n": len(values)}
    if len(values) >= 2:
        result["q1"], _, result["q3"] = statistics.quantiles(values, n=4, method="inclusive")
    return result


def median_of(rows, key):
    values = [row[key] for row in rows if row and row.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(rounds, available):
    """Per-variant medians, and per-round ratios to the baseline of the same round."""
    summary = {"echo": {}, "idle": {}, "scrape": {}, "fanout": {}, "mixed": {}}
    base = variants.BASELINE["echo"]
    for variant in variants.ECHO_VARIANTS:
        if variant not in available:
            continue
        echo_rows = [r["echo"].get(variant) for r in rounds]
        ok_rows = [row for row in echo_rows if row and "error" not in row]
        ratios, cpu_ratios, kb_deltas = [], [], []
        for r in rounds:
            mine, plain = r["echo"].get(variant, {}), r["echo"].get(base, {})
            if mine.get("msgs_per_s") and plain.get("msgs_per_s"):
                ratios.append(mine["msgs_per_s"] / plain["msgs_per_s"])
            if mine.get("server_cpu_us_per_msg") and plain.get("server_cpu_us_per_msg"):
                cpu_ratios.append(mine["server_cpu_us_per_msg"] / plain["server_cpu_us_per_msg"])
            mine_idle, plain_idle = r["idle"].get(variant) or {}, r["idle"].get(base) or {}
            if "kb_per_conn" in mine_idle and "kb_per_conn" in plain_idle:
                kb_deltas.append(mine_idle["kb_per_conn"] - plain_idle["kb_per_conn"])
        summary["echo"][variant] = {
            "msgs_per_s": median_of(ok_rows, "msgs_per_s"),
            "ratio": spread(ratios),
            "rtt_p50_ms": median_of(ok_rows, "rtt_p50_ms"),
            "rtt_p99_ms": median_of(ok_rows, "rtt_p99_ms"),
            "server_cpu_us_per_msg": median_of(ok_rows, "server_cpu_us_per_msg"),
            "server_cpu_ratio": spread(cpu_ratios),
            "server_cpu_utilisation": median_of(ok_rows, "server_cpu_utilisation"),
            "foreign_cpu_cores": median_of(ok_rows, "foreign_cpu_cores"),
            "gc_us_per_msg": [median_of([{"v": row["gc_us_per_msg"][g]} for row in ok_rows
                                         if row.get("gc_us_per_msg")], "v") for g in range(3)],
            "gc_tracked_objects": median_of(ok_rows, "gc_tracked_objects"),
            "capacity_ratio": spread([1 / r for r in cpu_ratios if r]),
            "errors": [row["error"] for row in echo_rows if row and "error" in row],
        }
        idle_rows = [r["idle"].get(variant) for r in rounds if r["idle"].get(variant)]
        ok_idle = [row for row in idle_rows if row and "error" not in row]
        summary["idle"][variant] = {
            "kb_per_conn": median_of(ok_idle, "kb_per_conn"),
            "delta_vs_plain_kb": spread(kb_deltas),
            "errors": [row["error"] for row in idle_rows if row and "error" in row],
        }
        zero = [row["scrape_0"] for row in ok_idle if row.get("scrape_0")]
        many = [row["scrape_many"] for row in ok_idle if row.get("scrape_many")]
        summary["scrape"][variant] = {
            "idle_connections": ok_idle[0]["idle_connections"] if ok_idle else None,
            "at_0": {k: median_of(zero, k) for k in ("median_ms", "bytes", "series", "ws_series", "ws_connections_active")},
            "at_many": {k: median_of(many, k) for k in ("median_ms", "bytes", "series", "ws_series", "ws_connections_active")},
            "series_equal_every_round": all(
                z["series"] == m["series"] for z, m in zip(zero, many)
            ) if zero else None,
        }
    mixed = [r.get("mixed") or {} for r in rounds]
    cpu = [(m.get("plain", {}).get("server_cpu_us_per_msg"), m.get("metrics", {}).get("server_cpu_us_per_msg"))
           for m in mixed]
    rate = [(m.get("plain", {}).get("msgs_per_s"), m.get("metrics", {}).get("msgs_per_s")) for m in mixed]
    if any(all(pair) for pair in cpu):
        summary["mixed"]["metrics"] = {
            "plain_cpu_us_per_msg": median_of([m.get("plain") for m in mixed], "server_cpu_us_per_msg"),
            "server_cpu_us_per_msg": median_of([m.get("metrics") for m in mixed], "server_cpu_us_per_msg"),
            "capacity_ratio": spread([p / i for p, i in cpu if p and i]),
            "ratio": spread([i / p for p, i in rate if p and i]),
            "errors": [row["error"] for m in mixed for row in m.values() if row and "error" in row],
        }
    fbase = variants.BASELINE["fanout"]
    for variant in variants.FANOUT_VARIANTS:
        if variant not in available:
            continue
        rows = [r["fanout"].get(variant) for r in rounds]
        ok_rows = [row for row in rows if row and "error" not in row]
        ratios = []
        for r in rounds:
            mine, plain = r["fanout"].get(variant, {}), r["fanout"].get(fbase, {})
            if mine.get("deliveries_per_s") and plain.get("deliveries_per_s"):
                ratios.append(mine["deliveries_per_s"] / plain["deliveries_per_s"])
        summary["fanout"][variant] = {
            "deliveries_per_s": median_of(ok_rows, "deliveries_per_s"),
            "ratio": spread(ratios),
            "dropped_total": sum(row["dropped"] for row in ok_rows),
            "server_cpu_us_per_delivery": median_of(ok_rows, "server_cpu_us_per_delivery"),
            "errors": [row["error"] for row in rows if row and "error" in row],
        }
    return summary


def targets(summary):
    """Each target with its measured value and pass / FAIL / n/a (judged on the median)."""

    def ratio_target(section, variant, threshold, label):
        """Judged on the median of plain CPU/msg over the variant's CPU/msg, round by round;
        the throughput ratio is reported beside it."""
        entry = summary[section].get(variant)
        judged = entry and entry.get("capacity_ratio")
        value = judged and judged["median"]
        if section == "fanout":  # no CPU figure per delivery for both: throughput decides
            judged = entry and entry["ratio"]
            value = judged and judged["median"]
        status = "n/a" if value is None or threshold is None else ("pass" if value >= threshold else "FAIL")
        if threshold is None:
            status = "n/a" if value is None else "reference"
        iqr = judged and judged.get("q1") is not None and (judged["q1"], judged["q3"])
        throughput = entry and entry.get("ratio") and entry["ratio"]["median"]
        return {"target": label, "variant": variant, "measured": value, "status": status,
                "iqr": iqr or None, "throughput_ratio": throughput,
                "rounds": judged and judged["n"]}

    def memory_target(variant, limit, label):
        entry = summary["idle"].get(variant)
        value = entry and entry["delta_vs_plain_kb"] and entry["delta_vs_plain_kb"]["median"]
        status = "n/a" if value is None else ("pass" if value <= limit else "FAIL")
        return {"target": label, "variant": variant, "measured": value, "status": status}

    def scrape_target(variant):
        entry = summary["scrape"].get(variant)
        plain = summary["scrape"].get(variants.BASELINE["echo"])
        label = "/metrics: same series count, scrape time within noise at 0 vs N connections"
        if not entry or entry["at_0"]["series"] is None:
            return {"target": label, "variant": variant, "measured": None, "status": "n/a"}
        zero, many = entry["at_0"], entry["at_many"]
        same = entry["series_equal_every_round"] and zero["series"] == many["series"]
        measured = f"{zero['series']:.0f} vs {many['series']:.0f} series; {zero['median_ms']:.1f} vs {many['median_ms']:.1f} ms"
        if plain and plain["at_0"]["median_ms"] is not None and plain["at_many"]["median_ms"] is not None:
            # daphne itself answers slower with N idle sockets to look after (plain grows too):
            # what wsmonitor adds to a scrape is judged, at most 1.5x its idle-server figure
            # plus 2 ms (loopback scrapes take ~2-5 ms).
            added_0 = zero["median_ms"] - plain["at_0"]["median_ms"]
            added_n = many["median_ms"] - plain["at_many"]["median_ms"]
            quick = added_n <= max(added_0, 0.0) * 1.5 + 2.0
            measured += (f" (plain {plain['at_0']['median_ms']:.1f} vs {plain['at_many']['median_ms']:.1f} ms:"
                         f" wsmonitor adds {added_0:.1f} vs {added_n:.1f} ms)")
        else:
            quick = many["median_ms"] <= zero["median_ms"] * 1.5 + 2.0
        return {"target": label, "variant": variant, "measured": measured, "status": "pass" if same and quick else "FAIL"}

    return [
        ratio_target("echo", "metrics", 0.97, "metrics+logs: server-CPU ratio >= 0.97"),
        ratio_target("mixed", "metrics", 0.97,
                     "metrics+logs, both consumers in one daphne: server-CPU ratio >= 0.97"),
        ratio_target("echo", "tracing-10", 0.92,
                     "+ connection and message spans, 10 % sampled: server-CPU ratio >= 0.92"),
        ratio_target("echo", "tracing", 0.80,
                     "+ connection and message spans, 100 % sampled: server-CPU ratio >= 0.80"),
        ratio_target("echo", "otel-asgi", None, "OTel ASGI middleware, 100 % sampled (reference)"),
        memory_target("metrics", 1.0, "metrics+logs idle memory <= +1 KB/conn over plain"),
        scrape_target("metrics"),
        scrape_target("tracing"),
        ratio_target("fanout", "layer-instrumented", 0.95, "layer instrumentation fan-out >= 0.95x plain layer"),
    ]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny counts, one round, no docs")
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                            help=f"default {value} ({QUICK[key]} with --quick)")
    parser.add_argument("--client", choices=("websockets", "raw"), default="websockets",
                        help="load generator's WebSocket client (raw: bench/rawws.py)")
    parser.add_argument("--variants", default=",".join(
                            variants.ECHO_VARIANTS + (variants.MIXED_VARIANT,) + variants.FANOUT_VARIANTS),
                        help="comma-separated subset to run (the baselines always run)")
    parser.add_argument("--profile", default="",
                        help="comma-separated variants to profile with py-spy after the rounds "
                             "(python -m bench.profile), output embedded in the report")
    parser.add_argument("--json", type=Path, default=None, help=f"results file (default {DEFAULT_JSON.relative_to(ROOT)})")
    parser.add_argument("--markdown", type=Path, default=None,
                        help=f"markdown report (default {DEFAULT_MARKDOWN.relative_to(ROOT)}; none with --quick)")
    args = parser.parse_args(argv)
    config = dict(QUICK if args.quick else FULL, client=args.client)
    for key in FULL:
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    return args, config


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args, config = parse_args(argv)
    # A smoke run never overwrites the committed results.
    json_path = args.json or (RESULTS / "quick.json.tmp" if args.quick else DEFAULT_JSON)
    markdown_path = args.markdown or (None if args.quick else DEFAULT_MARKDOWN)
    RESULTS.mkdir(parents=True, exist_ok=True)
    wanted = set(args.variants.split(",")) | set(variants.BASELINE.values())
    started = time.monotonic()

    availability = {}
    for variant in variants.ECHO_VARIANTS + (variants.MIXED_VARIANT,) + variants.FANOUT_VARIANTS:
        if variant not in wanted:
            availability[variant] = {"available": False, "reason": "not selected (--variants)"}
            continue
        ok, reason = probe(variant)
        availability[variant] = {"available": ok, "reason": reason}
        log(f"{variant}: {'available' if ok else 'unavailable: ' + reason}")
    available = {v for v, a in availability.items() if a["available"]}

    rounds = []
    for number in range(1, config["rounds"] + 1):
        result = {"round": number, "echo": {}, "idle": {}, "fanout": {}}
        with_idle = number <= config["idle_rounds"]
        for variant in variants.ECHO_VARIANTS:
            if variant not in available:
                continue
            try:
                result["echo"][variant], result["idle"][variant] = run_echo_variant(
                    variant, config, with_idle)
            except RuntimeError as exc:
                result["echo"][variant] = result["idle"][variant] = {"error": str(exc)}
            echo, idle = result["echo"][variant], result["idle"][variant] or {"error": "not measured"}
            log(f"round {number} {variant}: "
                + (f"{echo['msgs_per_s']:.0f} msg/s, p99 {echo['rtt_p99_ms']:.1f} ms, "
                   f"{echo['server_cpu_us_per_msg']:.0f} us/msg, server CPU {echo['server_cpu_utilisation']:.2f}, "
                   f"others {echo['foreign_cpu_cores']:.2f} cores" if "error" not in echo else echo["error"])
                + (f"; idle {idle['kb_per_conn']:.1f} KB/conn" if "error" not in idle else "; idle " + idle["error"]))
        if variants.MIXED_VARIANT in available:
            try:
                result["mixed"] = run_mixed(config, number)
            except RuntimeError as exc:
                result["mixed"] = {"plain": {"error": str(exc)}}
            log(f"round {number} mixed: " + ", ".join(
                f"{kind} {row['server_cpu_us_per_msg']:.0f} us/msg" if "error" not in row else f"{kind} {row['error']}"
                for kind, row in result["mixed"].items()))
        for variant in variants.FANOUT_VARIANTS:
            if variant not in available:
                continue
            try:
                result["fanout"][variant] = run_fanout_variant(variant, config)
            except RuntimeError as exc:
                result["fanout"][variant] = {"error": str(exc)}
            row = result["fanout"][variant]
            log(f"round {number} {variant}: "
                + (f"{row['deliveries_per_s']:.0f} deliveries/s, dropped {row['dropped']}" if "error" not in row else row["error"]))
        rounds.append(result)

    profiles = {}
    for variant in filter(None, args.profile.split(",")):
        if variant not in available:
            profiles[variant] = f"not profiled: {availability.get(variant, {}).get('reason', 'unknown variant')}"
            continue
        log(f"profiling {variant} with py-spy")
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "bench.profile", variant, "--top", "12"], cwd=ROOT,
                env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
            )
            profiles[variant] = completed.stdout.strip() or completed.stderr.strip()[-1500:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            profiles[variant] = f"profile failed: {exc!r}"

    summary = summarise(rounds, available)
    results = {
        "command": ("BENCH_GC_FREEZE=1 " if os.environ.get("BENCH_GC_FREEZE") else "")
        + "python -m bench" + ("" if not argv else " " + " ".join(argv)),
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - started, 1),
        "quick": args.quick,
        "machine": machine(),
        "versions": versions(),
        "config": dict(
            config, pinned_cpus=dict(zip(("daphne", "load generator"), _cpus())),
            gc_freeze=bool(os.environ.get("BENCH_GC_FREEZE")),
            fanout_consumer="wsmonitor InstrumentedAsyncWebsocketConsumer (metrics + logs)"
            if importlib.util.find_spec("wsmonitor") else "channels AsyncWebsocketConsumer",
        ),
        "variants": {v: dict(availability[v], description=variants.DESCRIPTIONS[v]) for v in availability},
        "rounds": rounds,
        "summary": summary,
        "profiles": profiles,
        "targets": targets(summary),
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {json_path}")
    if markdown_path:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(report.markdown(results))
        log(f"wrote {markdown_path}")
    failed = [t for t in results["targets"] if t["status"] == "FAIL"]
    for t in results["targets"]:
        log(f"target {t['status']:>4}: {t['target']} [{t['variant']}] measured {t['measured']}"
            + (f" (IQR {t['iqr'][0]:.3f}-{t['iqr'][1]:.3f})" if t.get("iqr") else "")
            + (f", throughput {t['throughput_ratio']:.3f}" if t.get("throughput_ratio") else ""))
    errors = [v for section in ("echo", "idle", "fanout", "mixed") for r in rounds
              for v, row in (r.get(section) or {}).items() if row and "error" in row]
    # Missed targets are a finding, not a harness failure: only errors change the exit status.
    del failed
    return 2 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
