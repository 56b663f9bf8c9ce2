"""In-process microbenchmark of the per-message path: what wsmonitor adds to one echoed message.

    python -m bench.microbench                         # this checkout
    python -m bench.microbench --tree /work/main --tree .   # two checkouts, interleaved rounds

No server: each run feeds one consumer ``connect``, N ``websocket.receive`` messages and a
``disconnect`` through channels' own ``__call__`` (``await_many_dispatch``, ``dispatch``), with a
no-op ASGI send. channels' per-message ``aclose_old_connections`` thread hop is stubbed out (it
costs ~100 us, identical for both, and would drown the difference). The plain channels consumer
and wsmonitor's instrumented one (metrics on, logs and tracing off: the per-message work that is
always on) run alternately, several rounds; the report is the median µs per message of each and
their difference.

With ``--tree`` each checkout runs in its own child process (``PYTHONPATH=<tree>``), the
checkouts alternating round by round, so a noisy machine hits both alike. For figures that do not
drift with the machine's load, count instructions: the difference between two runs of
different lengths is the per-message count, start-up cancelled out::

    for n in 2000 6000; do
      PYTHONPATH=<tree> valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$n \\
          python bench/microbench.py --only instrumented --rounds 1 --messages $n
    done
    # (Ir(6000) - Ir(2000)) / 4000 = instructions per message

``--instructions`` does exactly that (and ``--memory`` counts bytes per idle connection with
tracemalloc), for each ``--tree`` and ``--mode``::

    python -m bench.microbench --instructions --mode metrics --tree /tmp/base --tree .
    python -m bench.microbench --memory 2000 --mode metrics --tree /tmp/base --tree .

Modes: ``metrics`` (metrics on, logs and tracing off), ``tracing-10`` (plus a connection span and a
span per message, ``parentbased_traceidratio`` 0.1, what production runs) and ``tracing-100``
(every message span recorded). Both tracing modes install an SDK ``TracerProvider`` with a
``BatchSpanProcessor`` and an exporter that discards, as ``bench/benchproject/tracing.py`` does;
``random`` is seeded, so the sampled trace IDs, and the instruction counts, repeat exactly.
"""

import argparse
import asyncio
import gc
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

MODES = ("metrics", "tracing-10", "tracing-100")


def _install_tracing(mode):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased

    class Discarding(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    sampler = ALWAYS_ON if mode == "tracing-100" else ParentBased(TraceIdRatioBased(0.1))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(Discarding()))
    trace.set_tracer_provider(provider)


def _setup(mode="metrics"):
    import django
    from django.conf import settings

    random.seed(1)  # the SDK draws trace and span IDs from random: same IDs, same samples
    tracing = mode != "metrics"
    if tracing:
        _install_tracing(mode)
    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["channels", "wsmonitor"],
            CHANNEL_LAYERS={},
            LOGGING_CONFIG=None,
            WSMONITOR={"NODE": "bench", "LOGS": False, "TRACING": tracing,
                       "MESSAGE_SPANS": True, "TRACE_MODEL": "message",
                       "CONFIGURE_LOGGING": False},
        )
        django.setup()
    import channels.consumer

    async def _no_hop():
        return None

    channels.consumer.aclose_old_connections = _no_hop

    from channels.generic.websocket import AsyncWebsocketConsumer

    from wsmonitor import InstrumentedAsyncWebsocketConsumer

    class PlainEcho(AsyncWebsocketConsumer):
        async def connect(self):
            await self.accept()

        async def receive(self, text_data=None, bytes_data=None):
            await self.send(text_data=text_data, bytes_data=bytes_data)

    class InstrumentedEcho(InstrumentedAsyncWebsocketConsumer):
        async def connect(self):
            await self.accept()

        async def receive(self, text_data=None, bytes_data=None):
            await self.send(text_data=text_data, bytes_data=bytes_data)

    return {"plain": PlainEcho.as_asgi(), "instrumented": InstrumentedEcho.as_asgi()}


async def _one_run(app, messages, text):
    scope = dict(_SCOPE)
    feed = [{"type": "websocket.connect"}]
    feed += [{"type": "websocket.receive", "text": text}] * messages
    feed.append({"type": "websocket.disconnect", "code": 1000})
    it = iter(feed)

    async def receive():
        return next(it)

    async def send(message):
        return None

    started = time.perf_counter()
    await app(scope, receive, send)
    return (time.perf_counter() - started) / messages * 1e6


_SCOPE = {"type": "websocket", "path": "/ws/echo/", "query_string": b"", "headers": [],
          "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "subprotocols": []}


def _idle_bytes(app, connections):
    """tracemalloc bytes per accepted connection left idle (awaiting its next message)."""
    import tracemalloc

    async def main():
        forever = asyncio.get_running_loop().create_future()
        accepted = 0
        all_accepted = asyncio.get_running_loop().create_future()

        def connection():
            first = True

            async def receive():
                nonlocal first
                if first:
                    first = False
                    return {"type": "websocket.connect"}
                await forever
                return {"type": "websocket.disconnect", "code": 1000}

            async def send(message):
                nonlocal accepted
                if message["type"] == "websocket.accept":
                    accepted += 1
                    if accepted == connections:
                        all_accepted.set_result(None)
            return receive, send

        tasks = [asyncio.create_task(app(dict(_SCOPE), *connection()))]  # warm-up: caches
        await asyncio.sleep(0)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(connections - 1):
            tasks.append(asyncio.create_task(app(dict(_SCOPE), *connection())))
        await asyncio.wait_for(all_accepted, 60)
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        forever.set_result(None)
        await asyncio.gather(*tasks)
        return (after - before) / (connections - 1)

    return asyncio.run(main())


def child(rounds, messages, text, only=None, mode="metrics", memory=0, freeze=False):
    """Measure this interpreter's wsmonitor: ``rounds`` alternating runs of each consumer."""
    apps = _setup(mode)
    if freeze:
        gc.collect()
        gc.freeze()  # start-up's objects leave the collector's generations
    if memory:
        names = [only] if only else list(apps)
        return {name: [_idle_bytes(apps[name], memory)] for name in names}
    if only:
        apps = {only: apps[only]}
    results = {name: [] for name in apps}

    async def main():
        for name, app in apps.items():  # warm-up: label children, caches
            await _one_run(app, 200, text)
        for _ in range(rounds):
            for name, app in apps.items():
                results[name].append(await _one_run(app, messages, text))

    asyncio.run(main())
    return results


def _summary(results):
    plain = statistics.median(results["plain"])
    instrumented = statistics.median(results["instrumented"])
    return plain, instrumented, instrumented - plain


def _child_env(tree):
    env = {**os.environ, "PYTHONPATH": tree}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def instructions(tree, name, mode, text, short=2000, long=6000, freeze=False):
    """Instructions per message under callgrind: (Ir(long) - Ir(short)) / (long - short).

    Both runs go in parallel; ``PYTHONHASHSEED`` is fixed so that dict and set layouts repeat.
    """
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for messages in (short, long):
            out = os.path.join(tmp, f"cg.{messages}")
            runs.append((out, subprocess.Popen(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                 sys.executable, os.path.abspath(__file__), "--only", name, "--rounds", "1",
                 "--messages", str(messages), "--mode", mode, "--text", text]
                + (["--gc-freeze"] if freeze else []),
                env={**_child_env(tree), "PYTHONHASHSEED": "0"}, cwd=tree,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)))
        counts = []
        for out, proc in runs:
            _, err = proc.communicate(timeout=1800)
            if proc.returncode:
                raise RuntimeError(f"callgrind run failed: {err[-2000:]}")
            with open(out) as f:
                counts.append(int(re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)[1]))
    return (counts[1] - counts[0]) / (long - short)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[],
                        help="checkout to measure (repeatable); default: the importable wsmonitor")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--text", default="x" * 100)
    parser.add_argument("--mode", choices=MODES, default="metrics")
    parser.add_argument("--only", choices=("plain", "instrumented"),
                        help="run one consumer (for instruction counts under callgrind)")
    parser.add_argument("--instructions", action="store_true",
                        help="instructions per message under callgrind, per tree and consumer")
    parser.add_argument("--memory", type=int, default=0, metavar="N",
                        help="tracemalloc bytes per idle connection, N connections open")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() after start-up, as a server could once it is ready")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.instructions:
        for tree in [os.path.abspath(t) for t in args.tree or ["."]]:
            if args.only:  # the plain consumer runs no wsmonitor code: one count per machine
                print(f"{tree} [{args.mode}]: {args.only} "
                      f"{instructions(tree, args.only, args.mode, args.text, freeze=args.gc_freeze):.0f} Ir/msg", flush=True)
                continue
            counts = {name: instructions(tree, name, args.mode, args.text)
                      for name in ("plain", "instrumented")}
            print(f"{tree} [{args.mode}]: plain {counts['plain']:.0f} Ir/msg  instrumented "
                  f"{counts['instrumented']:.0f} Ir/msg  wsmonitor adds "
                  f"{counts['instrumented'] - counts['plain']:+.0f} Ir/msg", flush=True)
        return
    if args.memory and not args.child:
        for tree in [os.path.abspath(t) for t in args.tree or ["."]]:
            sizes = {}
            for name in ("plain", "instrumented"):  # each in a fresh process
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--child", "--only", name,
                     "--memory", str(args.memory), "--mode", args.mode],
                    env=_child_env(tree), cwd=tree, capture_output=True, text=True, check=True,
                    timeout=600).stdout
                sizes[name] = json.loads(out.splitlines()[-1])[name][0]
            print(f"{tree} [{args.mode}]: plain {sizes['plain']:.0f} B/conn  instrumented "
                  f"{sizes['instrumented']:.0f} B/conn  wsmonitor adds "
                  f"{sizes['instrumented'] - sizes['plain']:+.0f} B/conn", flush=True)
        return
    if args.child or not args.tree:
        results = child(args.rounds, args.messages, args.text, args.only, args.mode, args.memory,
                        args.gc_freeze)
        if args.child or args.only:
            print(json.dumps(results))
            return
        plain, instrumented, diff = _summary(results)
        print(f"plain {plain:.2f} µs/msg  instrumented {instrumented:.2f} µs/msg  "
              f"wsmonitor adds {diff:+.2f} µs/msg (median of {args.rounds} rounds)")
        return

    trees = [os.path.abspath(tree) for tree in args.tree]
    collected = {tree: {"plain": [], "instrumented": []} for tree in trees}
    for _ in range(args.rounds):
        for tree in trees:  # interleaved: each round runs every checkout once
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", "--rounds", "3",
                 "--messages", str(args.messages), "--text", args.text, "--mode", args.mode],
                env=_child_env(tree), cwd=tree, capture_output=True, text=True, check=True,
                timeout=600,
            ).stdout
            for name, values in json.loads(out.splitlines()[-1]).items():
                collected[tree][name].extend(values)
    for tree in trees:
        plain, instrumented, diff = _summary(collected[tree])
        print(f"{tree}: plain {plain:.2f} µs/msg  instrumented {instrumented:.2f} µs/msg  "
              f"wsmonitor adds {diff:+.2f} µs/msg")


if __name__ == "__main__":
    main()
