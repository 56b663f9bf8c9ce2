"""Lifecycle paths through real servers: sync heartbeat, invalid settings, logging etiquette."""

import asyncio
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from .conftest import Server, eventually

BEAT = {"WSMONITOR_HEARTBEAT_INTERVAL": "0.2", "WSMONITOR_HEARTBEAT_TIMEOUT": "0.6"}


def variant(name, **env):
    return {"DJANGO_SETTINGS_MODULE": "tests.settings_variants", "TESTS_SETTINGS_VARIANT": name,
            **env}


async def echo_once(server, path="/ws/echo/", text="hello"):
    async with connect(server.ws_url(path), origin=f"http://127.0.0.1:{server.port}",
                       open_timeout=5, close_timeout=5) as ws:
        await ws.send(text)
        assert await asyncio.wait_for(ws.recv(), 5) == text


async def test_a_sync_consumer_closes_a_zombie_with_4408_the_client_receives(start_daphne):
    server = start_daphne(app="tests.lifecycle_app:application", env=BEAT, name="sync-beat")
    labels = {"consumer": "SyncBeat"}
    before = server.scrape()
    async with connect(server.ws_url("/ws/sync-beat/"), open_timeout=5, close_timeout=5) as ws:
        pings = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # read like a client that never answers the heartbeat
                message = await asyncio.wait_for(ws.recv(), 5)
                pings += '"wsmonitor.ping"' in message
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
    assert pings >= 1

    def counted():
        after = server.scrape()
        return after.value("ws_closes_total", code="4408", **labels) - before.value(
            "ws_closes_total", code="4408", **labels)

    assert await eventually(lambda: counted() == 1, timeout=5, message="4408 counted")
    after = server.scrape()
    assert after.value("ws_heartbeat_timeouts_total", **labels) - before.value(
        "ws_heartbeat_timeouts_total", **labels) == 1
    assert after.value("ws_connections_active", **labels) == 0
    assert after.value("ws_closes_total", **labels) - before.value("ws_closes_total",
                                                                   **labels) == 1
    assert "AsyncToSync" not in server.log()
    closes = [e for e in server.events("ws_close") if e.get("code") == 4408]
    assert len(closes) == 1 and closes[0]["closed_by"] == "heartbeat"


async def test_an_invalid_setting_is_logged_at_start_and_connections_still_work(start_daphne):
    server = start_daphne(env=variant("bad-close-codes"), name="bad-settings")
    errors = {event["check"]: event for event in server.events("ws_config_error")}
    assert "CLOSE_CODES" in errors["wsmonitor.E004"]["message"]
    assert "documented defaults" in errors["wsmonitor.E000"]["message"]
    # The demo's settings name an access rule for /metrics: invalid settings shut it rather
    # than fall back to the default, which answers everyone.
    assert "/metrics refuses every request" in errors["wsmonitor.E000"]["message"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.http_url("/metrics"), timeout=5)
    assert refused.value.code == 403 and b"WSMONITOR is invalid" in refused.value.read()
    await echo_once(server)
    await eventually(lambda: server.events("ws_close"), timeout=5, message="ws_close logged")
    (opened,) = server.events("ws_open")
    assert opened["consumer"] == "EchoConsumer"
    assert [e["code"] for e in server.events("ws_close")] == [1000]
    assert not server.events("ws_error")
    assert "TypeError" not in server.log()


async def test_a_root_handler_the_project_configured_keeps_receiving(start_daphne, tmp_path):
    log_file = tmp_path / "project.log"
    server = start_daphne(env=variant("root-file", TESTS_LOG_FILE=str(log_file)),
                          name="root-file")
    await echo_once(server)
    await eventually(lambda: "ws_close" in log_file.read_text(), timeout=5,
                     message="wsmonitor's events in the project's file")
    text = log_file.read_text()
    assert "ws_open" in text and "consumer='EchoConsumer'" in text


class Runserver(Server):
    """``django-admin runserver`` (daphne's, as "daphne" is in INSTALLED_APPS), no reloader."""

    kind = "runserver"
    modules = ("daphne",)

    def command(self, app, keepalive):
        return ["django", "runserver", "--noreload", f"127.0.0.1:{self.port}"]


def not_found(server, path):
    try:
        urllib.request.urlopen(server.http_url(path), timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
    else:
        raise AssertionError(f"{path} was found")


@pytest.mark.parametrize("kind", ["daphne", "runserver"])
def test_a_fresh_project_prints_each_record_once(kind, start_daphne, tmp_path):
    env = variant("fresh")
    server = (start_daphne(env=env, name="fresh") if kind == "daphne"
              else Runserver(tmp_path, env=env, name="fresh"))
    try:
        not_found(server, "/no-such-page-7f3/")
        from .conftest import wait_until

        wait_until(lambda: "no-such-page-7f3" in server.log(), timeout=5)
        # Django's request log and, under runserver, its access line; each once.
        lines = [line for line in server.log().splitlines()
                 if "Not Found: /no-such-page-7f3/" in line]
        assert len(lines) == 1, server.log()
    finally:
        server.stop()


async def test_send_backlog_is_absent_where_it_cannot_be_measured(start_server):
    server = start_server("uvicorn", name="uvicorn-backlog")
    async with connect(server.ws_url("/ws/echo/"), origin=f"http://127.0.0.1:{server.port}",
                       open_timeout=5, close_timeout=5) as ws:
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), 5) == "x"
        # The sampler runs while a connection is open: wait for a few of its ticks.
        await eventually(lambda: server.scrape().value("ws_event_loop_lag_seconds_count") >= 3,
                         timeout=10, message="sampler ticks")
        page = server.scrape()
    for name in ("ws_send_backlog_bytes", "ws_send_backlog_connections"):
        assert not [s for s in page.samples if s[0] == name], f"{name} exported under uvicorn"
