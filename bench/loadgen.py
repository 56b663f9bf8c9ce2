"""Load generator: drives one running daphne over loopback and prints one JSON result.

Run as its own process (``python -m bench.loadgen echo --url ... --pid ...``) so the client never
shares a core's event loop with the server. Every phase is bounded by a count and by ``--timeout``.

The client is the ``websockets`` library (``--client raw`` switches to ``bench.rawws``); it runs on
its own CPU and uses about a quarter of it, so daphne and not the client is what saturates: check
``server_cpu_utilisation`` (about 1.0 = one core busy) and ``client_cpu_utilisation``.

Echo is a closed loop: each connection sends one message and awaits its echo before sending the
next (one message in flight per connection, N in flight in all). Throughput is therefore what the
server sustains with N concurrent senders, and the round trip is pure server + loopback latency
without queueing behind a client-side window.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time
import urllib.parse
import urllib.request

import websockets

from bench import procstat, rawws

CONNECT_CONCURRENCY_MAX = 40  # daphne's listen backlog is 50 (FIELD-NOTES)


def _client_options():
    # No client pings, no compression: only the frames under test cross the socket.
    return dict(compression=None, ping_interval=None, open_timeout=20, close_timeout=5, max_size=None)


class _WebsocketsClient:
    """The ``websockets`` library behind the small interface the phases use."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def connect(cls, url):
        return cls(await websockets.connect(url, **_client_options()))

    async def send(self, payload):
        await self.ws.send(payload.decode())

    async def recv(self):
        return (await self.ws.recv()).encode()

    async def close(self):
        await self.ws.close()


class _RawClient:
    """``bench.rawws`` behind the same interface."""

    def __init__(self, ws):
        self.ws = ws

    @classmethod
    async def connect(cls, url):
        parts = urllib.parse.urlsplit(url)
        return cls(await rawws.RawWebSocket.connect(parts.hostname, parts.port, parts.path or "/"))

    async def send(self, payload):
        self.ws.send_frame(rawws.frame(payload))

    async def recv(self):
        return await self.ws.recv()

    async def close(self):
        await self.ws.close()


CLIENTS = {"raw": _RawClient, "websockets": _WebsocketsClient}
_client = _WebsocketsClient


async def _open_many(url, count, concurrency):
    """Open `count` connections with at most `concurrency` handshakes in flight."""
    semaphore = asyncio.Semaphore(min(concurrency, CONNECT_CONCURRENCY_MAX))
    handshake_seconds = []

    async def one():
        async with semaphore:
            started = time.perf_counter()
            ws = await _client.connect(url)
            handshake_seconds.append(time.perf_counter() - started)
            return ws

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    return opened, failed, handshake_seconds


async def _close_many(connections, concurrency=CONNECT_CONCURRENCY_MAX):
    semaphore = asyncio.Semaphore(concurrency)

    async def one(ws):
        async with semaphore:
            try:
                await ws.close()
            except Exception:
                pass

    await asyncio.gather(*(one(ws) for ws in connections))


def _percentile(sorted_values, fraction):
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def echo(args):
    """N connections x M messages of B bytes, closed loop; server CPU from /proc around the burst."""
    connections, failed, handshakes = await _open_many(args.url, args.connections, args.connect_concurrency)
    if failed:
        await _close_many(connections)
        return {"error": f"{len(failed)} of {args.connections} connections failed: {failed[0]!r}"}
    rtts = []
    mismatches = 0

    async def run(ws, index, count, record):
        nonlocal mismatches
        prefix = f"{index:05d}:"
        for seq in range(count):
            head = f"{prefix}{seq:07d}:"
            payload = (head + "x" * max(0, args.size - len(head))).encode()
            started = time.perf_counter_ns()
            await ws.send(payload)
            reply = await ws.recv()
            if record:
                rtts.append(time.perf_counter_ns() - started)
            if reply != payload:
                mismatches += 1

    # Warm-up: lazy imports and first-message work on the server stay out of the measurement.
    await asyncio.gather(*(run(ws, i, args.warmup, False) for i, ws in enumerate(connections)))
    await asyncio.to_thread(procstat.wait_quiet, args.pid)
    cpu_before = procstat.cpu_seconds(args.pid)
    busy_before, steal_before = procstat.system_busy_seconds()
    client_cpu_before = time.process_time()
    started = time.perf_counter()
    timed_out = False
    try:
        async with asyncio.timeout(args.timeout):
            await asyncio.gather(*(run(ws, i, args.messages, True) for i, ws in enumerate(connections)))
    except TimeoutError:
        timed_out = True
    elapsed = time.perf_counter() - started
    cpu_used = procstat.cpu_seconds(args.pid) - cpu_before
    client_cpu = time.process_time() - client_cpu_before
    busy_after, steal_after = procstat.system_busy_seconds()
    # CPU the rest of the machine used meanwhile (other processes): a noisy-neighbour gauge.
    foreign = busy_after - busy_before - cpu_used - client_cpu
    await _close_many(connections)
    done = len(rtts)
    rtts.sort()
    return {
        "connections": args.connections,
        "messages_per_connection": args.messages,
        "message_bytes": args.size,
        "warmup_messages": args.warmup,
        "messages": done,
        "timed_out": timed_out,
        "mismatches": mismatches,
        "seconds": elapsed,
        "msgs_per_s": done / elapsed if elapsed > 0 else 0.0,
        "rtt_p50_ms": _percentile(rtts, 0.50) / 1e6 if rtts else None,
        "rtt_p99_ms": _percentile(rtts, 0.99) / 1e6 if rtts else None,
        "server_cpu_s": cpu_used,
        "server_cpu_us_per_msg": cpu_used / done * 1e6 if done else None,
        "server_cpu_utilisation": cpu_used / elapsed if elapsed > 0 else None,
        "client_cpu_utilisation": client_cpu / elapsed if elapsed > 0 else None,
        "foreign_cpu_cores": max(0.0, foreign / elapsed) if elapsed > 0 else None,
        "steal_cores": (steal_after - steal_before) / elapsed if elapsed > 0 else None,
        "handshake_p99_ms": _percentile(sorted(handshakes), 0.99) * 1e3,
        "client": args.client,
    }


def scrape(url, repeats):
    """GET /metrics `repeats` times; return median time, size, series count, ws_connections_active."""
    times, body = [], b""
    for _ in range(repeats):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read()
        times.append(time.perf_counter() - started)
    text = body.decode("utf-8", "replace")
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    active = None
    for line in series:
        if line.startswith("ws_connections_active"):
            active = (active or 0.0) + float(line.rsplit(" ", 1)[1])
    return {
        "median_ms": statistics.median(times) * 1e3,
        "max_ms": max(times) * 1e3,
        "bytes": len(body),
        "series": len(series),
        "ws_series": sum(1 for line in series if line.startswith("ws_")),
        "ws_connections_active": active,
    }


async def idle(args):
    """RSS of the server before and after opening K idle connections; /metrics scraped at 0 and K."""
    await asyncio.to_thread(procstat.wait_quiet, args.pid)
    scrape_zero = await asyncio.to_thread(scrape, args.metrics_url, args.scrapes) if args.metrics_url else None
    await asyncio.to_thread(procstat.wait_quiet, args.pid)
    rss_before = procstat.rss_bytes(args.pid)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(args.timeout):
            connections, failed, handshakes = await _open_many(args.url, args.idle, args.connect_concurrency)
    except TimeoutError:
        return {"error": f"opening {args.idle} idle connections took over {args.timeout} s"}
    open_seconds = time.perf_counter() - started
    if failed:
        await _close_many(connections)
        return {"error": f"{len(failed)} of {args.idle} idle connections failed: {failed[0]!r}"}
    await asyncio.to_thread(procstat.wait_quiet, args.pid)
    rss_after = procstat.rss_bytes(args.pid)
    scrape_many = await asyncio.to_thread(scrape, args.metrics_url, args.scrapes) if args.metrics_url else None
    await _close_many(connections)
    return {
        "idle_connections": args.idle,
        "open_seconds": open_seconds,
        "handshake_p99_ms": _percentile(sorted(handshakes), 0.99) * 1e3,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "kb_per_conn": (rss_after - rss_before) / args.idle / 1024,
        "scrape_0": scrape_zero,
        "scrape_many": scrape_many,
    }


async def fanout(args):
    """G connections in one group each send S messages at once; every member should get G x S."""
    connections, failed, _ = await _open_many(args.url, args.connections, args.connect_concurrency)
    if failed:
        await _close_many(connections)
        return {"error": f"{len(failed)} of {args.connections} connections failed: {failed[0]!r}"}
    # The consumer joins the group before accepting, so every member is in it once connected.
    expected_each = len(connections) * args.messages
    received = [0] * len(connections)

    async def reader(i, ws):
        while received[i] < expected_each:
            if await ws.recv() is None:
                return  # the server closed the connection
            received[i] += 1

    async def sender(i, ws):
        for seq in range(args.messages):
            await ws.send((f"{i}:{seq}:" + "x" * max(0, args.size - 16)).encode())

    await asyncio.to_thread(procstat.wait_quiet, args.pid)
    cpu_before = procstat.cpu_seconds(args.pid)
    started = time.perf_counter()
    timed_out = False
    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(connections)]
    try:
        async with asyncio.timeout(args.timeout):
            await asyncio.gather(*(sender(i, ws) for i, ws in enumerate(connections)))
            await asyncio.gather(*readers)
    except TimeoutError:
        timed_out = True
        for task in readers:
            task.cancel()
    elapsed = time.perf_counter() - started
    cpu_used = procstat.cpu_seconds(args.pid) - cpu_before
    await _close_many(connections)
    delivered = sum(received)
    expected = expected_each * len(connections)
    return {
        "connections": len(connections),
        "messages_per_connection": args.messages,
        "expected_deliveries": expected,
        "deliveries": delivered,
        "dropped": expected - delivered,
        "timed_out": timed_out,
        "seconds": elapsed,
        "deliveries_per_s": delivered / elapsed if elapsed > 0 else 0.0,
        "server_cpu_us_per_delivery": cpu_used / delivered * 1e6 if delivered else None,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("echo", "idle", "fanout"))
    parser.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/ws/echo/")
    parser.add_argument("--pid", type=int, required=True, help="daphne's pid, for /proc CPU and RSS")
    parser.add_argument("--metrics-url", help="http://127.0.0.1:PORT/metrics (idle mode)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--scrapes", type=int, default=10)
    parser.add_argument("--connect-concurrency", type=int, default=CONNECT_CONCURRENCY_MAX)
    parser.add_argument("--timeout", type=float, default=120.0, help="hard limit of the measured phase, s")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="websockets")
    args = parser.parse_args(argv)
    global _client
    _client = CLIENTS[args.client]
    result = asyncio.run({"echo": echo, "idle": idle, "fanout": fanout}[args.mode](args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
