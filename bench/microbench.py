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
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time


def _setup():
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["channels", "wsmonitor"],
            CHANNEL_LAYERS={},
            LOGGING_CONFIG=None,
            WSMONITOR={"NODE": "bench", "LOGS": False, "TRACING": False,
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
    scope = {"type": "websocket", "path": "/ws/echo/", "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "subprotocols": []}
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


def child(rounds, messages, text, only=None):
    """Measure this interpreter's wsmonitor: ``rounds`` alternating runs of each consumer."""
    apps = _setup()
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", default=[],
                        help="checkout to measure (repeatable); default: the importable wsmonitor")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--text", default="x" * 100)
    parser.add_argument("--only", choices=("plain", "instrumented"),
                        help="run one consumer (for instruction counts under callgrind)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child or not args.tree:
        results = child(args.rounds, args.messages, args.text, args.only)
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
            env = {**os.environ, "PYTHONPATH": tree}
            env.pop("DJANGO_SETTINGS_MODULE", None)
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--child", "--rounds", "3",
                 "--messages", str(args.messages), "--text", args.text],
                env=env, cwd=tree, capture_output=True, text=True, check=True, timeout=600,
            ).stdout
            for name, values in json.loads(out.splitlines()[-1]).items():
                collected[tree][name].extend(values)
    for tree in trees:
        plain, instrumented, diff = _summary(collected[tree])
        print(f"{tree}: plain {plain:.2f} µs/msg  instrumented {instrumented:.2f} µs/msg  "
              f"wsmonitor adds {diff:+.2f} µs/msg")


if __name__ == "__main__":
    main()
