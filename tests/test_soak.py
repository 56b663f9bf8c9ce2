"""A bounded soak: hundreds of sockets chatting through Redis under periodic scrapes.

WSMONITOR_SOAK_SECONDS (default 20) makes it longer.
"""

import asyncio
import json
import os
import time

from websockets.asyncio.client import connect

from .conftest import established, rss_kb

SECONDS = float(os.environ.get("WSMONITOR_SOAK_SECONDS", "20"))
ECHO, CHAT, ROOMS = 200, 100, 10


async def test_soak(start_daphne, redis_url):
    server = start_daphne(env={"REDIS_URL": redis_url}, name="soak")
    origin = f"http://127.0.0.1:{server.port}"
    gate = asyncio.Semaphore(40)

    async def open_one(path):
        async with gate:
            return await connect(server.ws_url(path), origin=origin, open_timeout=10)

    echoes = await asyncio.gather(*(open_one("/ws/echo/") for _ in range(ECHO)))
    chats = await asyncio.gather(*(open_one(f"/ws/chat/soak-{server.port}-{i % ROOMS}/")
                                   for i in range(CHAT)))
    sent = received = chat_sent = 0
    stop = time.monotonic() + SECONDS

    async def echo_loop(ws, index):
        nonlocal sent, received
        while time.monotonic() < stop:
            payload = f"{index}:{sent}"
            await ws.send(payload)
            sent += 1
            assert await asyncio.wait_for(ws.recv(), 10) == payload
            received += 1
            await asyncio.sleep(0.05)

    async def chat_loop(ws, index):
        nonlocal chat_sent
        while time.monotonic() < stop:
            await ws.send(json.dumps({"message": f"{index}"}))
            chat_sent += 1
            await asyncio.sleep(0.5)

    async def drain(ws):
        try:
            while True:
                await ws.recv()
        except Exception:
            return

    drains = [asyncio.ensure_future(drain(ws)) for ws in chats]
    samples = []

    async def scraper():
        while time.monotonic() < stop:
            await asyncio.sleep(2)
            snapshot = server.scrape()
            samples.append((snapshot.value("ws_connections_active"), established(server.port),
                            rss_kb(server.process.pid), established(server.port, 'close-wait')))

    await asyncio.gather(*(echo_loop(ws, i) for i, ws in enumerate(echoes)),
                         *(chat_loop(ws, i) for i, ws in enumerate(chats)), scraper())
    assert sent == received > ECHO  # echo loses nothing
    assert samples, "no scrape happened"
    for active, kernel, _, waiting in samples:
        assert active == kernel == ECHO + CHAT  # the gauge against the kernel's own count
        assert waiting == 0  # no CLOSE-WAIT accumulation
    first_rss, last_rss = samples[0][2], samples[-1][2]
    print(f"soak: {sent} echoes, {chat_sent} chat sends, RSS {first_rss} -> {last_rss} KB, "
          f"{len(samples)} scrapes")
    assert last_rss - first_rss < 16 * 1024, (first_rss, last_rss)  # flat within 16 MB

    for ws in echoes + chats:
        await ws.close()
    for task in drains:
        task.cancel()
    deadline = time.monotonic() + 20
    while server.scrape().value("ws_connections_active") or established(server.port):
        assert time.monotonic() < deadline, "sockets did not drain"
        await asyncio.sleep(0.1)
    snapshot = server.scrape()
    assert snapshot.value("ws_messages_total", consumer="EchoConsumer", direction="in") == sent
    assert snapshot.value("ws_closes_total", consumer="EchoConsumer", code="1000") == ECHO
