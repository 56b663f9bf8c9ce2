"""Headless Chromium on the demo chat page: wsmonitor.js against a real daphne."""

import asyncio
import json
import re
import shutil

import pytest

from .conftest import eventually, need

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENV = {"WSMONITOR_HEARTBEAT_INTERVAL": "0.3", "WSMONITOR_HEARTBEAT_TIMEOUT": "5"}


@pytest.fixture
async def browser():
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        async_playwright = None
    need(async_playwright is not None, "playwright (Python) is not installed")
    need(CHROMIUM is not None, "no chromium binary on PATH (apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def chat(snapshot, name, **labels):
    return snapshot.value(name, consumer="ChatConsumer", **labels)


async def open_chat(browser, server):
    page = await browser.new_page()
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws))
    await page.goto(server.http_url("/"), timeout=10000)
    await page.wait_for_function(
        "document.getElementById('status').textContent.startsWith('connected')", timeout=10000)
    return page, sockets


async def test_two_pages_chat_heartbeat_close_1001_and_a_counted_reconnect(
        browser, start_daphne):
    server = start_daphne(env=ENV, name="browser")
    alice, alice_sockets = await open_chat(browser, server)
    bob, bob_sockets = await open_chat(browser, server)

    sent_frames = []
    alice_sockets[0].on("framesent", lambda payload: sent_frames.append(payload))
    await alice.fill("#text", "hello from alice")
    await alice.press("#text", "Enter")
    await bob.wait_for_function(
        "document.getElementById('log').textContent.includes('hello from alice')", timeout=5000)

    # Both pages answer heartbeats: the RTT histogram moves, and pongs are no chat messages.
    snapshot = await eventually(lambda: (s := server.scrape()) and chat(
        s, "ws_heartbeat_rtt_seconds_count") >= 4 and s, message="RTTs from both pages")
    assert chat(snapshot, "ws_messages_total", direction="in") == 1
    # Loopback RTTs measured 2-30 ms; allow for a busy machine, not for a broken heartbeat.
    assert chat(snapshot, "ws_heartbeat_rtt_seconds_bucket", le="2.5") == \
        chat(snapshot, "ws_heartbeat_rtt_seconds_count")
    # The demo page has no trace context of its own: the client invents none.
    assert "traceparent" not in alice_sockets[0].url
    message = next(json.loads(f) for f in sent_frames if "hello from alice" in f)
    assert "traceparent" not in message
    await eventually(lambda: any(json.loads(f).get("type") == "wsmonitor.pong" for f in sent_frames),
                     message="a pong frame from alice's page")

    await alice.close()  # the browser says "going away"
    await eventually(lambda: chat(server.scrape(), "ws_closes_total", code="1001") == 1,
                     message="1001 counted")

    # The server drops every socket (a restart); bob's client reconnects with backoff.
    port = server.port
    server.stop()
    await bob.wait_for_function(
        "document.getElementById('status').textContent.startsWith('closed')", timeout=5000)
    restarted = start_daphne(env=ENV, name="browser-restarted", port=port)
    await bob.wait_for_function(
        "document.getElementById('status').textContent.startsWith('connected')", timeout=15000)
    snapshot = await eventually(lambda: (s := restarted.scrape()) and chat(
        s, "ws_client_reconnects_total") == 1 and s, message="reconnect counted")
    assert chat(snapshot, "ws_connections_active") == 1
    attempts = await bob.evaluate("window.demoClient.reconnects")
    assert attempts == 1
    reconnect_url = bob_sockets[-1].url
    assert re.search(r"[?&]reconnect=[1-9]", reconnect_url), reconnect_url
    await bob.fill("#text", "back again")
    await bob.press("#text", "Enter")
    await bob.wait_for_function(
        "document.getElementById('log').textContent.includes('back again')", timeout=5000)
    await asyncio.wait_for(bob.close(), 10)
