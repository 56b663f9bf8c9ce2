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


# --- Spans and error counts through daphne (spans printed by OTEL_TRACES_EXPORTER=console) ----

TRACED = {"OTEL_TRACES_EXPORTER": "console"}


def printed_spans(server):
    import json

    return [json.loads(line) for line in server.log().splitlines()
            if line.startswith("{") and '"context"' in line]


def session_spans(server, consumer):
    """The spans of the one session of ``consumer``, once its connection span is printed."""
    connections = [s for s in printed_spans(server) if s["name"] == "ws.connection"
                   and s["attributes"].get("wsmonitor.consumer") == consumer]
    if len(connections) != 1:
        return None
    session_id = connections[0]["attributes"]["websocket.session.id"]
    return [s for s in printed_spans(server)
            if s["attributes"].get("websocket.session.id") == session_id]


async def test_a_stream_run_in_a_task_puts_its_attributes_on_a_span_of_the_session(
        start_daphne):
    import json

    server = start_daphne(app="tests.lifecycle_app:application", env=TRACED, name="stream")
    async with connect(server.ws_url("/ws/stream/"), open_timeout=5, close_timeout=5) as ws:
        # The demo's pattern: receive_json() starts the answer in a task and returns.
        await ws.send(json.dumps({"prompt": "why", "chunks": 3, "delay": 0.01}))
        while True:
            answer = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if answer["type"] == "done":
                break
    spans = await eventually(lambda: session_spans(server, "StreamConsumer"), timeout=5,
                             message="the stream session's spans printed")
    streamed = [s for s in spans if "wsmonitor.stream.name" in s["attributes"]]
    assert len(streamed) == 1, [s["name"] for s in spans]
    attributes = streamed[0]["attributes"]
    assert attributes["wsmonitor.stream.name"] == "answer"
    assert attributes["wsmonitor.stream.chunks"] == 3
    assert attributes["wsmonitor.stream.outcome"] == "ok"
    # In the message's trace (the default TRACE_MODEL), under the message that started it,
    # although that span ended long before; linked to the connection like the message.
    (message,) = [s for s in spans if s["name"] == "StreamConsumer receive"]
    assert streamed[0]["parent_id"] == message["context"]["span_id"]
    assert streamed[0]["end_time"] > message["end_time"]
    connection = next(s for s in spans if s["name"] == "ws.connection")
    assert connection["context"]["span_id"] in [
        link["context"]["span_id"] for link in streamed[0]["links"]]


async def test_split_connection_span_exports_an_error_raised_in_disconnect(start_daphne):
    import json

    env = {**TRACED, "TESTS_WSMONITOR": json.dumps({"SPLIT_CONNECTION_SPAN": True})}
    server = start_daphne(app="tests.lifecycle_app:application", env=env, name="split")
    async with connect(server.ws_url("/ws/disconnect-raises/"), open_timeout=5,
                       close_timeout=5) as ws:
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), 5) == "x"
    spans = await eventually(
        lambda: (found := session_spans(server, "DisconnectRaises"))
        and any(s["name"] == "ws.close" for s in found) and found,
        timeout=5, message="the ws.close span printed")
    errors = [s for s in spans if s["status"]["status_code"] == "ERROR"
              and any(e["name"] == "exception" for e in s["events"])]
    assert errors, [(s["name"], s["status"]) for s in spans]
    (failed,) = errors
    assert failed["name"] == "ws.close"
    (event,) = [e for e in failed["events"] if e["name"] == "exception"]
    assert event["attributes"]["exception.message"] == "disconnect failed"
    assert "in disconnect" in failed["status"]["description"]
    # The ws.connection span ended at accept and was exported without it.
    (connection,) = [s for s in spans if s["name"] == "ws.connection"]
    assert connection["status"]["status_code"] != "ERROR"
    labels = {"consumer": "DisconnectRaises"}
    assert server.scrape().value("ws_errors_total", stage="disconnect", **labels) == 1


async def test_connect_failing_on_a_dead_redis_is_counted_and_logged_once(start_daphne):
    from websockets.exceptions import InvalidStatus

    from .conftest import free_port

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: like Redis down
    server = start_daphne(app="tests.lifecycle_app:application", env={"REDIS_URL": dead},
                          name="dead-redis")
    with pytest.raises(InvalidStatus) as refused:  # group_add raises in connect()
        async with connect(server.ws_url("/ws/chat/lobby/"), open_timeout=10):
            pass
    assert refused.value.response.status_code == 500
    labels = {"consumer": "ChatConsumer"}
    await eventually(lambda: server.scrape().value("ws_connects_rejected_total", reason="error",
                                                   **labels) == 1, timeout=10)
    after = server.scrape()
    assert after.value("ws_errors_total", stage="connect", **labels) == 1
    assert after.value("ws_errors_total", **labels) == 1  # not again under "layer"
    errors = server.events("ws_error")
    assert len(errors) == 1, errors
    assert errors[0]["stage"] == "connect"
