"""The console in headless Chromium against two daphne nodes sharing Redis.

Daphne serves ``tests.test_console_live:application``: the demo's routes behind
``AuthMiddlewareStack``, inside wsmonitor's middleware (the recommended order), so
sessions carry their user.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .conftest import ROOT, eventually, need
from .test_browser import browser  # noqa: F401 - the fixture

APP = "tests.test_console_live:application"
PASSWORD = "console-" + uuid.uuid4().hex[:12]
HOSTILE = "<img src=x onerror=\"window.pwned=1\">'"
TIMEOUT = 10  # seconds a session may take to show up on another node (interval 0.5 s)


def __getattr__(name):
    """daphne imports ``application``; built only then, so collecting this file costs nothing."""
    if name != "application":
        raise AttributeError(name)
    from django.core.asgi import get_asgi_application

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")
    http = get_asgi_application()
    from channels.auth import AuthMiddlewareStack
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

    from demo_project.routing import websocket_urlpatterns
    from wsmonitor import WSMonitorMiddleware

    return ProtocolTypeRouter({
        "http": ASGIStaticFilesHandler(http),
        # wsmonitor outermost: the consumer that adopts its connection brings the user.
        "websocket": WSMonitorMiddleware(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    })


def manage(env, *args):
    full = {**os.environ, "DJANGO_SETTINGS_MODULE": "demo_project.settings", **env}
    full.pop("REDIS_URL", None)
    out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def nodes(start_daphne, redis_url, tmp_path):
    env = {"DEMO_DB": str(tmp_path / "demo.sqlite3"), "CONSOLE_TEST_PASSWORD": PASSWORD}
    manage(env, "migrate", "-v0")
    manage(env, "console_user", "boss", "--close", "--password-env", "CONSOLE_TEST_PASSWORD")
    manage(env, "console_user", "watcher", "--password-env", "CONSOLE_TEST_PASSWORD")
    manage(env, "shell", "-c", "from django.contrib.auth.models import User; "
           f"User.objects.create_user('nobody', password='{PASSWORD}', is_staff=True)")
    server_env = {**env, "REDIS_URL": redis_url, "WSMONITOR_CONSOLE_INTERVAL": "0.5",
                  "WSMONITOR_REGISTRY_TTL": "3"}
    tag = uuid.uuid4().hex[:6]
    servers = []
    for side in ("a", "b"):
        name = f"console-{side}-{tag}"
        servers.append(start_daphne(env=server_env, name=name, app=APP))
        servers[-1].name = name
    return servers


async def login(browser, server, user):  # noqa: F811
    context = await browser.new_context(viewport={"width": 1500, "height": 900})
    page = await context.new_page()
    await page.goto(server.http_url("/accounts/login/"), timeout=10000)
    await page.fill("#id_username", user)
    await page.fill("#id_password", PASSWORD)
    await page.click("#sign-in")
    await page.wait_for_load_state()
    return context, page


def ws_client(server, path, **kwargs):
    return connect(server.ws_url(path), open_timeout=5, close_timeout=5, **kwargs)


async def session_id_of(ws):
    await ws.send(json.dumps({"message": "who am i"}))
    return json.loads(await asyncio.wait_for(ws.recv(), 5))["session_id"]


async def test_a_session_on_node_b_is_seen_and_closed_from_node_a(browser, nodes):  # noqa: F811
    node_a, node_b = nodes
    room = urllib.parse.quote(f"<svg onload=alert(1)>\"'\x01{uuid.uuid4().hex[:6]}", safe="")
    context, watch = await login(browser, node_a, "boss")
    # The console is open before the client connects: what follows arrives by live update.
    await watch.goto(node_a.http_url("/wsmonitor/console/"), timeout=10000)
    await watch.evaluate("window.notReloaded = true")
    async with ws_client(node_b, f"/ws/chat/{room}/", user_agent_header=HOSTILE) as ws:
        session_id = await session_id_of(ws)
        started = time.monotonic()
        row = f'tr[data-session="{session_id}"]'
        await watch.wait_for_selector(f"#sessions {row}", timeout=TIMEOUT * 1000)
        print(f"\nsession on node B listed on node A after {time.monotonic() - started:.2f} s "
              "(no reload)")
        assert await watch.evaluate("window.notReloaded") is True
        cells = await watch.locator(f"#sessions {row} td.text").all_text_contents()
        assert any("<svg onload=alert(1)>\"'\\x01" in cell for cell in cells)  # shown, not run
        assert await watch.evaluate("document.querySelectorAll('script').length") == 1
        assert node_b.process.pid == int(
            (await watch.locator(f"#sessions {row} td").nth(3).text_content()).split("pid")[1])
        fleet = await watch.locator("#fleet tbody tr").all_text_contents()
        assert any(node_b.name in row_text for row_text in fleet)

        page = await context.new_page()  # a second tab closes it; the first one watches
        await page.goto(watch.url)
        await page.click(f"#sessions {row} a")
        assert HOSTILE == await page.locator("#user-agent").text_content()
        assert await page.evaluate("window.pwned") is None
        await page.fill("#code", "4000")
        await page.fill("#reason", "live test <b>")
        await page.check("#confirm")
        await page.click("#close-button")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 4000
    await eventually(lambda: node_b.scrape().value(
        "ws_closes_total", consumer="ChatConsumer", code="4000") == 1,
        message="4000 counted on node B")
    assert node_a.scrape().value("ws_closes_total", code="4000") == 0
    assert "Close with code 4000 sent (layer)" in await page.locator("#message").text_content()
    close_events = [e for e in node_a.events("ws_console_close")
                    if e["target_session_id"] == session_id]
    assert [(e["staff_user"], e["code"], e["reason"]) for e in close_events] == [
        ("boss", 4000, "live test <b>")]
    # The node that held the socket logs who asked and why, too.
    asked = [e for e in node_b.events("ws_close_requested")
             if e["target_session_id"] == session_id]
    assert [(e["by"], e["reason"]) for e in asked] == [("console", "live test <b>")]

    # Recently closed, on the page opened before, without a reload, with who closed it.
    closed_row = f'#closed tr[data-session="{session_id}"]'
    await watch.wait_for_selector(closed_row, timeout=TIMEOUT * 1000)
    assert await watch.evaluate("window.notReloaded") is True
    await watch.wait_for_selector(f'#sessions tr[data-session="{session_id}"]', state="detached",
                                  timeout=TIMEOUT * 1000)
    assert (await watch.locator(f"{closed_row} td.code").text_content()) == "4000"
    assert (await watch.locator(f"{closed_row} td.closed-by").text_content()) == "console"
    await context.close()


async def test_without_the_permissions_no_data_and_no_close(browser, nodes):  # noqa: F811
    node_a, node_b = nodes
    async with ws_client(node_b, "/ws/chat/perm/") as ws:
        session_id = await session_id_of(ws)
        boss, boss_page = await login(browser, node_a, "boss")
        await boss_page.goto(node_a.http_url("/wsmonitor/console/"))
        await boss_page.wait_for_selector(f'tr[data-session="{session_id}"]',
                                          timeout=TIMEOUT * 1000)

        # Updates that fail leave the data on screen, say so, and resume by themselves.
        def updates(url):
            return "part=" in url

        async def refuse(route):
            await route.abort()

        await boss_page.route(updates, refuse)
        await boss_page.wait_for_function(
            "document.getElementById('live').textContent.startsWith('updates paused')",
            timeout=10000)
        assert await boss_page.locator(f'tr[data-session="{session_id}"]').count() == 1
        await boss_page.unroute(updates, refuse)
        await boss_page.wait_for_function(
            "document.getElementById('live').textContent.startsWith('live ·')", timeout=15000)

        anonymous = await browser.new_page()
        await anonymous.goto(node_a.http_url("/wsmonitor/console/"))
        assert "/accounts/login/" in anonymous.url
        assert session_id not in await anonymous.content()

        nobody, nobody_page = await login(browser, node_a, "nobody")
        response = await nobody_page.goto(node_a.http_url("/wsmonitor/console/"))
        assert response.status == 403 and session_id not in await nobody_page.content()
        response = await nobody_page.goto(
            node_a.http_url(f"/wsmonitor/console/sessions/{session_id}/"))
        assert response.status == 403

        watcher, page = await login(browser, node_a, "watcher")
        await page.goto(node_a.http_url(f"/wsmonitor/console/sessions/{session_id}/"))
        assert await page.locator("#close-button").count() == 0
        assert "close WebSocket sessions" in await page.locator("#why-not").text_content()
        for who in (page, nobody_page):
            token = next(c["value"] for c in await who.context.cookies()
                         if c["name"] == "csrftoken")
            status = await who.evaluate(
                """([url, token]) => fetch(url, {method: "POST", headers: {"X-CSRFToken": token,
                     "Content-Type": "application/x-www-form-urlencoded"},
                     body: "code=4000&confirm=yes"}).then(r => r.status)""",
                [node_a.http_url(f"/wsmonitor/console/sessions/{session_id}/close"), token])
            assert status == 403
        await ws.send(json.dumps({"message": "still here"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["message"] == "still here"
        for context in (boss, nobody, watcher):
            await context.close()
        await anonymous.close()


async def test_ten_thousand_sessions_and_a_screenshot(browser, nodes, redis_url):  # noqa: F811
    import redis

    from .test_console import load_fleet

    node_a, node_b = nodes
    client = redis.Redis.from_url(redis_url)
    tag = uuid.uuid4().hex[:6]
    # Two processes of 5,000 sessions, each with a full 15-minute chart ring.
    processes = load_fleet(client, [f"load-{tag}-{i}" for i in range(2)])
    try:
        async with ws_client(node_b, "/ws/chat/lobby/"), ws_client(node_a, "/ws/echo/"):
            context, page = await login(browser, node_a, "boss")
            chat = await context.new_page()  # boss chats on node B: the console names the user
            await chat.goto(node_b.http_url("/"))
            await chat.wait_for_function(
                "document.getElementById('status').textContent.startsWith('connected')")

            async def render(url):
                started = time.perf_counter()
                response = await page.goto(url)
                await page.wait_for_selector("#sessions tbody tr")
                return time.perf_counter() - started, len(await response.body())

            console = node_a.http_url("/wsmonitor/console/")
            # Cold: the first console page this daphne process renders.
            cold, size = await render(console)
            warm = [(await render(console))[0] for _ in range(3)]
            sizes = [(await render(f"{console}?page={number}"))[1] for number in (2, 100, 200)]
            fleet = len(await (await page.request.get(f"{console}?part=fleet")).body())
            print(f"\n10,000+ sessions over daphne, full 15-min rings: first (cold) render "
                  f"{cold * 1000:.0f} ms, then {min(warm) * 1000:.0f}-{max(warm) * 1000:.0f} ms;"
                  f" page 1 {size / 1024:.1f} KB (fleet part {fleet / 1024:.1f} KB); pages "
                  f"{[round(s / 1024, 1) for s in sizes]} KB")
            assert cold < 1.0 and max(warm) < 1.0
            assert max(size, fleet, *sizes) < 200 * 1024
            forget(client, processes)
            await page.goto(node_a.http_url("/wsmonitor/console/?user=boss"))
            await page.wait_for_selector("#sessions tbody tr[data-session]")
            users = await page.locator(
                "#sessions tbody tr[data-session] td").nth(5).all_text_contents()
            assert users == ["boss"]
            # The chat page was told its session ID (the console lists it as boss's) and that
            # these servers trace nothing.
            await chat.wait_for_function(
                "document.getElementById('session-id').textContent.length === 36", timeout=5000)
            mine = await chat.locator("#session-id").text_content()
            assert await page.locator(f'#sessions tr[data-session="{mine}"]').count() == 1
            assert await chat.locator("#trace-id").text_content() == "tracing is off"
            if os.environ.get("WSM_CONSOLE_SCREENSHOT"):  # docs/console.png
                await some_traffic(node_a, node_b)
                await page.goto(node_a.http_url("/wsmonitor/console/"))
                await page.wait_for_timeout(3000)
                await page.screenshot(path=os.environ["WSM_CONSOLE_SCREENSHOT"])
            await context.close()
    finally:
        forget(client, processes)
        client.close()


async def some_traffic(node_a, node_b, seconds=40):
    """Chat, echo and a few closes of each kind, so the screenshot's charts have a shape."""
    async def drain(ws):
        try:
            async for _ in ws:
                pass
        except ConnectionClosed:
            pass

    async def open_one(i):
        server = (node_a, node_b)[i % 2]
        ws = await connect(server.ws_url("/ws/chat/lobby/" if i % 3 else "/ws/echo/"),
                           open_timeout=5).__aenter__()
        readers.append(asyncio.create_task(drain(ws)))
        return ws

    readers = []
    clients = [await open_one(i) for i in range(12)]
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        ws = clients[n % len(clients)]
        try:
            await ws.send(json.dumps({"message": f"message {n}"}) if n % 3 else f"echo {n}")
        except ConnectionClosed:
            pass
        if n % 40 == 0:
            await clients.pop(0).close(code=(1000, 1001, 4000)[n % 3])
            clients.append(await open_one(n))
        if n % 110 == 0:
            clients.pop().transport.abort()  # 1006
            clients.append(await open_one(n))
        await asyncio.sleep(0.05)
    for ws in clients[:4]:
        await ws.close()
    for reader in readers:
        reader.cancel()


def forget(client, processes):
    for process in processes:
        for kind in ("sessions", "process", "index", "series", "closed"):
            client.delete(f"wsmonitor:console:{kind}:{process}")

