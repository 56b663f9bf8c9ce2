"""The console in one process: permissions, what a session shows, escaping, closing, Redis."""

import asyncio
import json
import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Permission, User
from django.template.loader import render_to_string
from django.test import Client, override_settings
from django.urls import include, path
from django.utils.html import escape

from wsmonitor import InstrumentedAsyncJsonWebsocketConsumer
from wsmonitor.console import charts, snapshot, store

from . import consumers
from .test_sessions_command import events  # noqa: F401 - the fixture

urlpatterns = [path("console/", include("wsmonitor.console.urls"))]

CONSOLE_SETTINGS = {
    "ROOT_URLCONF": __name__,
    "SESSION_ENGINE": "django.contrib.sessions.backends.signed_cookies",
    "MIDDLEWARE": [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    "STATIC_URL": "/static/",
    "LOGIN_URL": "/login/",
    "TEMPLATES": [{"BACKEND": "django.template.backends.django.DjangoTemplates",
                   "APP_DIRS": True,
                   "OPTIONS": {"context_processors": [
                       "django.template.context_processors.request"]}}],
}
NODE = "console-node"
HOSTILE = "<script>alert('x')</script>\"quoted\" & \x1b[31m\x00end"


@pytest.fixture
def console(settings):
    for key, value in CONSOLE_SETTINGS.items():
        setattr(settings, key, value)
    settings.WSMONITOR = {"NODE": NODE, "CONSOLE_INTERVAL": 0.5, "LOGS": False}
    return settings


def make_user(name, staff=True, perms=()):
    user = User.objects.create_user(name, password="unused-" + name, is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename,
                                                         content_type__app_label="wsmonitor"))
    return user


def client_for(user, csrf=False):
    client = Client(enforce_csrf_checks=csrf)
    if user is not None:
        client.force_login(user)
    return client


def publisher():
    return snapshot.get_publisher()


# --- Access ----------------------------------------------------------------------------------

@pytest.mark.django_db
def test_nobody_without_the_permissions_sees_data(console):
    anonymous = client_for(None)
    response = anonymous.get("/console/")
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")
    for url in ("/console/api/fleet", "/console/api/sessions", "/console/api/closed"):
        assert anonymous.get(url).status_code == 403
    assert anonymous.post("/console/sessions/x/close", {"code": 4000}).status_code == 403

    outsiders = [make_user("plain", staff=False, perms=["view_console", "close_sessions"]),
                 make_user("staff-no-perm")]
    inactive = make_user("former", perms=["view_console"])
    inactive.is_active = False
    inactive.save()
    for user in outsiders:
        client = client_for(user)
        for url in ("/console/", "/console/api/fleet", "/console/api/sessions",
                    "/console/sessions/x/"):
            response = client.get(url)
            assert response.status_code == 403, (user, url)
            assert NODE.encode() not in response.content
        assert client.post("/console/sessions/x/close", {"code": 4000}).status_code == 403
    assert client_for(inactive).get("/console/").status_code == 302  # logged out by Django

    viewer = client_for(make_user("viewer", perms=["view_console"]))
    assert viewer.get("/console/").status_code == 200
    data = viewer.get("/console/api/fleet").json()
    assert [p["node"] for p in data["processes"]] == [NODE]
    assert "registry is off" in data["note"]
    # Viewing is not closing.
    assert viewer.post("/console/sessions/x/close", {"code": 4000, "confirm": "yes"}
                       ).status_code == 403
    assert viewer.post(f"/console/processes/{publisher().process}/drain",
                       {"confirm": "yes"}).status_code == 403


@pytest.mark.django_db
def test_close_needs_a_csrf_token(console):
    closer = make_user("closer", perms=["view_console", "close_sessions"])
    client = client_for(closer, csrf=True)
    response = client.post("/console/sessions/x/close", {"code": 4000, "confirm": "yes"})
    assert response.status_code == 403 and b"CSRF" in response.content


# --- One process, no registry ----------------------------------------------------------------

async def connect(path="/ws/echo/", headers=(), subprotocols=None):
    communicator = WebsocketCommunicator(consumers.Echo.as_asgi(), path, headers=list(headers),
                                         subprotocols=subprotocols)
    connected, _ = await communicator.connect(timeout=3)
    assert connected
    await communicator.send_to(text_data="session")
    session_id = (await communicator.receive_from(timeout=3)).split()[0]
    return communicator, session_id


@pytest.mark.django_db(transaction=True)
async def test_a_session_is_listed_with_live_counts_and_closed_from_the_console(console):
    viewer = await sync_to_async(make_user)("viewer", perms=["view_console", "close_sessions"])
    client = await sync_to_async(client_for)(viewer)
    communicator, session_id = await connect()
    for text in ("a", "bb", "ccc"):
        await communicator.send_to(text_data=text)
        assert await communicator.receive_from(timeout=3) == text

    data = (await sync_to_async(client.get)("/console/api/sessions",
                                            {"session": session_id[:8]})).json()
    (entry,) = data["sessions"]
    assert entry["session_id"] == session_id
    # "session" and three echoes: counted by the connection, as ws_messages_total counts them
    assert (entry["messages_in"], entry["messages_out"]) == (4, 4)
    assert (entry["bytes_in"], entry["bytes_out"]) == (7 + 6, 73 + 6)
    assert (entry["consumer"], entry["path"], entry["node"]) == ("Echo", "/ws/echo/", NODE)
    assert entry["route"] == "local" and entry["closable"]
    assert (await sync_to_async(client.get)("/console/api/sessions", {"consumer": "Nope"})
            ).json()["total"] == 0

    page = await sync_to_async(client.get)(f"/console/sessions/{session_id}/")
    assert b'id="close-button"' in page.content
    unconfirmed = await sync_to_async(client.post)(
        f"/console/sessions/{session_id}/close", {"code": "4000"})
    assert "confirmation" in unconfirmed["Location"]
    assert await communicator.receive_nothing(timeout=0.2)
    response = await sync_to_async(client.post)(
        f"/console/sessions/{session_id}/close", {"code": "4000", "confirm": "yes"})
    assert response.status_code == 302 and "done=" in response["Location"]
    closed = await communicator.receive_output(timeout=3)
    assert closed == {"type": "websocket.close", "code": 4000}
    await communicator.wait(timeout=3)

    publisher().sample(snapshot.get_config())  # what the sampler thread does every interval
    data = (await sync_to_async(client.get)("/console/api/closed")).json()
    mine = [c for c in data["closed"] if c["session_id"] == session_id]
    assert len(mine) == 1 and mine[0]["code"] == 4000
    # Without a registry nothing waits for Redis: closes are kept only as "recently closed".
    assert len(publisher().unpushed) == 0
    assert publisher().unpushed.maxlen == publisher().recent.maxlen == 300
    assert (await sync_to_async(client.get)("/console/api/sessions",
                                            {"session": session_id})).json()["total"] == 0


class Beat(InstrumentedAsyncJsonWebsocketConsumer):
    wsmonitor_heartbeat = 0.1
    wsmonitor_heartbeat_timeout = 30

    async def connect(self):
        await self.accept(subprotocol=(self.scope["subprotocols"] or [None])[0])

    async def receive_json(self, content, **kwargs):
        await self.send_json({"session_id": self.session_id})


async def next_ping(communicator):
    while True:
        content = await communicator.receive_json_from(timeout=3)
        if content.get("type") == "wsmonitor.ping":
            return content


@pytest.mark.django_db(transaction=True)
async def test_the_last_heartbeat_round_trip_and_the_subprotocol_are_shown(console):
    viewer = await sync_to_async(make_user)("viewer", perms=["view_console"])
    client = await sync_to_async(client_for)(viewer)
    started = time.monotonic()  # before the first ping can go out
    communicator = WebsocketCommunicator(Beat.as_asgi(), "/ws/beat/",
                                         subprotocols=["chat.v2", "chat.v1"])
    assert (await communicator.connect(timeout=3))[0]
    try:
        await communicator.send_json_to({"hello": 1})
        while "session_id" not in (reply := await communicator.receive_json_from(timeout=3)):
            pass
        session_id = reply["session_id"]

        async def shown():
            entry = (await sync_to_async(client.get)(f"/console/api/sessions/{session_id}")).json()
            page = (await sync_to_async(client.get)(f"/console/sessions/{session_id}/")).content
            return entry["rtt"], page.decode()

        entry = (await sync_to_async(client.get)(f"/console/api/sessions/{session_id}")).json()
        assert (entry["subprotocol"], entry["requested_subprotocols"]) == (
            "chat.v2", "chat.v2, chat.v1")
        rtt, page = await shown()
        assert rtt is None  # no pong yet: nothing to show, not a zero
        ping = await next_ping(communicator)
        received = time.monotonic()
        await asyncio.sleep(0.15)  # the client takes its time: the RTT must include it
        held = time.monotonic() - received
        await communicator.send_json_to({"type": "wsmonitor.pong", "id": ping["id"]})
        await communicator.send_json_to({"after": "pong"})  # dispatched after the pong
        while "session_id" not in await communicator.receive_json_from(timeout=3):
            pass
        elapsed = time.monotonic() - started
        rtt, page = await shown()
        assert rtt is not None and held <= rtt <= elapsed, (held, rtt, elapsed)
        assert f"{round(rtt * 1000)} ms" in page
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_user_names_with_wsmonitor_outside_auth_middleware_stack(console):
    from channels.auth import AuthMiddlewareStack
    from django.conf import settings

    from wsmonitor import WSMonitorMiddleware

    viewer = await sync_to_async(make_user)("viewer", perms=["view_console"])
    client = await sync_to_async(client_for)(viewer)
    alice = await sync_to_async(client_for)(await sync_to_async(make_user)("alice", staff=False))
    cookie = f"{settings.SESSION_COOKIE_NAME}={alice.cookies[settings.SESSION_COOKIE_NAME].value}"
    # The recommended order: wsmonitor outermost, so it also counts what the stack refuses.
    app = WSMonitorMiddleware(AuthMiddlewareStack(consumers.Echo.as_asgi()))
    opened = {}
    for who, headers in (("alice", [(b"cookie", cookie.encode())]), ("anonymous", [])):
        communicator = WebsocketCommunicator(app, "/ws/echo/", headers=headers)
        assert (await communicator.connect(timeout=3))[0]
        await communicator.send_to(text_data="session")
        opened[who] = (communicator, (await communicator.receive_from(timeout=3)).split()[0])
    try:
        for who, expected in (("alice", "alice"), ("anonymous", "")):
            session_id = opened[who][1]
            entry = (await sync_to_async(client.get)(f"/console/api/sessions/{session_id}")).json()
            assert (entry["user"], entry["kind"]) == (expected, "async")
        page = (await sync_to_async(client.get)("/console/")).content.decode()
        assert "alice" in page and "anonymous" in page
        assert "need <code>AuthMiddlewareStack" not in page
    finally:
        for communicator, _ in opened.values():
            await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_hostile_strings_are_shown_as_text(console):
    viewer = await sync_to_async(make_user)("viewer", perms=["view_console"])
    client = await sync_to_async(client_for)(viewer)
    long = "A" * 10_000 + "<b>"
    communicator, session_id = await connect(
        "/ws/" + HOSTILE.replace("\x00", "") + "/",
        headers=[(b"user-agent", (HOSTILE + long).encode())], subprotocols=[HOSTILE, long])
    try:
        listing = (await sync_to_async(client.get)("/console/")).content.decode()
        detail = (await sync_to_async(client.get)(f"/console/sessions/{session_id}/")
                  ).content.decode()
        for html in (listing, detail):
            assert "<script>alert" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)" in html
            assert "\x1b" not in html and "\\x1b[31m" in html
        assert "&quot;quoted&quot; &amp;" in detail and "<b>" not in detail
        assert "\x00" not in detail and "\\x00end" in detail  # the user agent kept the NUL
        assert len(detail) < 20_000  # 10 KB strings are clipped at snapshot.MAX_TEXT
        api = (await sync_to_async(client.get)("/console/api/sessions")).json()
        assert api["sessions"][0]["user_agent"].startswith(HOSTILE)  # JSON: exact, escaped
    finally:
        await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
async def test_close_all_of_a_process_and_the_trace_link(console):
    from wsmonitor.testing import span_exporter

    exporter = span_exporter()
    from wsmonitor.testing import MetricsSnapshot, metric_diff

    console.WSMONITOR = {**console.WSMONITOR, "METRICS": True,
                         "CONSOLE_TRACE_URL": "https://jaeger.example/trace/{trace_id}?x=1&y=2"}
    closer = await sync_to_async(make_user)("closer", perms=["view_console", "close_sessions"])
    client = await sync_to_async(client_for)(closer)
    opened = [await connect() for _ in range(3)]
    session_id = opened[0][1]
    page = (await sync_to_async(client.get)(f"/console/sessions/{session_id}/")).content.decode()
    entry = (await sync_to_async(client.get)(f"/console/api/sessions/{session_id}")).json()
    assert len(entry["trace_id"]) == 32
    assert f'href="https://jaeger.example/trace/{entry["trace_id"]}?x=1&amp;y=2"' in page
    process = publisher().process
    refused = await sync_to_async(client.post)(f"/console/processes/{process}/drain", {})
    assert refused.status_code == 400  # not confirmed
    before = MetricsSnapshot.collect()
    response = await sync_to_async(client.post)(
        f"/console/processes/{process}/drain", {"confirm": "yes"},
        headers={"Accept": "application/json"})
    assert response.json() == {"sent": 3, "skipped": 0, "code": 4012}  # the default
    for communicator, _ in opened:
        assert await communicator.receive_output(timeout=3) == {
            "type": "websocket.close", "code": 4012}
        await communicator.wait(timeout=3)
    # Exported as itself, not folded into 4xxx, though the project never declared it.
    labels = {"consumer": "Echo", "node": NODE}
    assert metric_diff(before, "ws_closes_total", code="4012", **labels) == 3
    assert metric_diff(before, "ws_closes_total", code="4xxx", **labels) == 0
    connection_spans = [s for s in exporter.get_finished_spans()
                        if format(s.context.trace_id, "032x") == entry["trace_id"]]
    assert connection_spans  # the link leads to the session's own trace


@pytest.mark.django_db(transaction=True)
async def test_middleware_only_sessions_of_other_processes_have_no_button(console):
    from wsmonitor.console import closing

    entry = {"session_id": "s", "process": "other", "kind": "middleware", "closable": True,
             "channel": None}
    assert closing.reach(entry, "me") == (None, closing.MIDDLEWARE_ONLY)
    entry.update(kind="async", channel="specific..inmemory!abc")
    assert closing.reach(entry, "me") == (None, closing.IN_MEMORY)
    entry.update(channel="specific.abc!def")
    assert closing.reach(entry, "me") == ("layer", None)
    assert closing.reach({**entry, "process": "me"}, "me") == ("local", None)


@pytest.mark.django_db(transaction=True)
async def test_a_close_reason_is_logged_escaped_and_bounded(console, events):  # noqa: F811
    console.WSMONITOR = {**console.WSMONITOR, "LOGS": True}
    closer = await sync_to_async(make_user)("closer", perms=["view_console", "close_sessions"])
    client = await sync_to_async(client_for)(closer)
    communicator, session_id = await connect()
    page = (await sync_to_async(client.get)(f"/console/sessions/{session_id}/")).content.decode()
    assert 'name="reason" maxlength="200"' in page
    fleet = (await sync_to_async(client.get)("/console/?part=fleet")).content.decode()
    assert 'name="reason" maxlength="200"' in fleet  # close all: a reason too
    reason = "deploy 42 <script>\x1b[2J\n" + "y" * 5000
    response = await sync_to_async(client.post)(
        f"/console/sessions/{session_id}/close",
        {"code": "4000", "confirm": "yes", "reason": reason})
    assert response.status_code == 302 and "done=" in response["Location"]
    assert await communicator.receive_output(timeout=3) == {"type": "websocket.close",
                                                             "code": 4000}
    await communicator.send_input({"type": "websocket.disconnect", "code": 4000})
    await communicator.wait(timeout=3)
    (logged,) = events("ws_console_close")
    assert (logged["staff_user"], logged["target_session_id"], logged["code"]) == (
        "closer", session_id, 4000)
    assert logged["reason"] == ("deploy 42 <script>\\x1b[2J\\x0a" + "y" * 5000)[:200]


@pytest.mark.django_db(transaction=True)
async def test_the_session_page_of_a_remote_middleware_only_session(console_redis):
    """No button, and the page says why: nothing could carry the request to that process."""
    now = time.time()
    entry = json.loads(fake_session(7, "mw-node", now))
    entry.update(kind="middleware", channel=None, layer=None, consumer="PlainConsumer",
                 user=HOSTILE_NAME)
    await sync_to_async(fake_process)(console_redis, "mw-node",
                                      {entry["session_id"]: json.dumps(entry)})
    closer = await sync_to_async(make_user)("closer", perms=["view_console", "close_sessions"])
    client = await sync_to_async(client_for)(closer)
    page = (await sync_to_async(client.get)(f"/console/sessions/{entry['session_id']}/")
            ).content.decode()
    assert 'id="close-button"' not in page and 'name="confirm"' not in page
    why = escape(closing_module().MIDDLEWARE_ONLY)
    assert f'id="why-not">No close button: {why}.' in page
    listing = (await sync_to_async(client.get)("/console/", {"node": "mw-node"})).content.decode()
    assert f'title="{why}">n/a' in listing
    refused = await sync_to_async(client.post)(
        f"/console/sessions/{entry['session_id']}/close", {"code": "4000", "confirm": "yes"})
    assert "Cannot+close" in refused["Location"] or "Cannot%20close" in refused["Location"]


def closing_module():
    from wsmonitor.console import closing

    return closing


#: A user name nobody should trust: markup, quotes, an escape sequence and 10 KB.
HOSTILE_NAME = "<script>alert(1)</script>\"'\x1b[31m" + "N" * 10_000


class HostileUser:
    is_authenticated = True

    def get_username(self):
        return HOSTILE_NAME


@pytest.mark.django_db(transaction=True)
async def test_a_hostile_user_name_is_text_in_the_list_and_the_session_page(console):
    echo = consumers.Echo.as_asgi()

    async def with_user(scope, receive, send):  # what AuthMiddlewareStack would resolve
        return await echo({**scope, "user": HostileUser()}, receive, send)

    communicator = WebsocketCommunicator(with_user, "/ws/echo/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_to(text_data="session")
    session_id = (await communicator.receive_from(timeout=3)).split()[0]
    viewer = await sync_to_async(make_user)("viewer", perms=["view_console"])
    client = await sync_to_async(client_for)(viewer)
    try:
        listing = (await sync_to_async(client.get)("/console/")).content.decode()
        detail = (await sync_to_async(client.get)(f"/console/sessions/{session_id}/")
                  ).content.decode()
    finally:
        await communicator.disconnect()
    assert session_id in listing
    for html in (listing, detail):
        assert "<script>alert(1)" not in html and "\x1b" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;\\x1b[31m" in html
    assert "N" * 100 not in listing  # cut to fit the table
    assert "N" * 2000 in detail and "N" * 2100 not in detail  # bounded: snapshot.MAX_TEXT
    assert len(detail) < 20_000


def test_the_multiprocess_note_without_a_registry(console, monkeypatch):
    from wsmonitor.console.views import _scope_note

    class Local:
        shared = False

    note = _scope_note(Local(), [{"multiprocess": True}])
    assert note.startswith("This page shows one server process of several")
    assert _scope_note(Local(), [{"multiprocess": False}]).startswith("The session registry")


# --- Redis: every process, and 10,000 sessions ------------------------------------------------

@pytest.fixture
def console_redis(console, redis_url):
    import redis

    console.WSMONITOR = {"NODE": NODE, "REGISTRY_URL": redis_url, "CONSOLE_INTERVAL": 0.5,
                         "LOGS": False}
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=snapshot.PREFIX + "*"):
        client.delete(key)
    yield client
    for key in client.scan_iter(match=snapshot.PREFIX + "*"):
        client.delete(key)
    client.close()


def fake_process(client, name, sessions, published_at=None, points=(), ttl=60):
    process = f"{name}:1:abcd"
    now = time.time()
    client.set(snapshot.PROCESS_KEY + process, json.dumps({
        "process": process, "node": name, "pid": 1, "started_at": now - 60,
        "published_at": published_at or now, "interval": 0.5, "active": len(sessions),
        "multiprocess": False}), ex=ttl)
    if sessions:
        pipe = client.pipeline(transaction=False)
        items = [(json.loads(v)["session_id"], v) for v in sessions.values()]
        for start in range(0, len(items), 2000):
            pipe.hset(snapshot.SESSIONS_KEY + process, mapping=dict(items[start:start + 2000]))
        pipe.execute()
    index = [[e["session_id"], e["opened_at"], e["consumer"], e["path"], e["user"]]
             for e in map(json.loads, sessions.values())]
    client.set(snapshot.INDEX_KEY + process, json.dumps(index), ex=ttl)
    for point in points:
        client.rpush(snapshot.SERIES_KEY + process, json.dumps(point))
    return process


def fake_session(i, node, now):
    return json.dumps({
        "session_id": f"{i:08d}-1111-2222-3333-444444444444", "process": f"{node}:1:abcd",
        "node": node, "pid": 1, "consumer": "ChatConsumer" if i % 2 else "EchoConsumer",
        "kind": "async", "path": f"/ws/chat/room-{i % 97}/",
        "client": f"10.0.{i % 250}.1:5{i % 9999}",
        "user": f"user{i}", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/130",
        "subprotocol": None, "requested_subprotocols": None, "opened_at": now - i,
        "trace_id": None, "layer": "default", "channel": f"specific.abc!{i}",
        "messages_in": i, "messages_out": 2 * i, "bytes_in": 10 * i, "bytes_out": 20 * i,
        "rtt": None, "groups": None, "closable": True})


@pytest.mark.django_db
def test_every_process_in_redis_and_stale_ones_marked(console_redis):
    now = time.time()
    points = [{"t": now - 10 + i, "active": i, "connects": 6 * i, "closes": 0, "in": 10 * i,
               "out": 20 * i, "errors": 0, "codes": {"1000": i},
               "rtt": {"0.005": i, "0.025": 2 * i, "+Inf": 2 * i}} for i in range(10)]
    fake_process(console_redis, "other-node", {"x": fake_session(1, "other-node", now)},
                 points=points)
    fake_process(console_redis, "quiet-node", {}, published_at=now - 30)
    viewer = client_for(make_user("viewer", perms=["view_console"]))
    publisher().sample(snapshot.get_config())  # this process publishes too
    data = viewer.get("/console/api/fleet").json()
    by_node = {p["node"]: p for p in data["processes"]}
    assert set(by_node) == {NODE, "other-node", "quiet-node"} and data["note"] is None
    assert by_node["quiet-node"]["state"] == "stale" and by_node["other-node"]["state"] == "live"
    other = by_node["other-node"]["last"]
    assert other["connects/min"]["connects"] == "360.0"  # 6 per second
    assert other["messages/s"] == {"in": "10.0", "out": "20.0"}
    # Half the round trips in the last minute fell under 5 ms, all under 25 ms.
    assert other["heartbeat RTT"]["p50"] == "5.0 ms"
    html = viewer.get("/console/?part=fleet").content.decode()
    assert html.count("<polyline") >= 3 * 6 and "quiet-node" in html
    listing = viewer.get("/console/api/sessions", {"node": "other-node"}).json()
    assert listing["total"] == 1 and listing["sessions"][0]["route"] == "layer"


@pytest.mark.django_db
def test_a_process_whose_keys_expired_is_gone_from_the_fleet(console_redis):
    """Stale while its last report is old, then gone once its keys expire (as a dead
    process's do, ``gone after`` seconds after its last write)."""
    from .conftest import wait_until

    fake_process(console_redis, "dying-node", {"x": fake_session(1, "dying-node", time.time())},
                 published_at=time.time() - 30, ttl=1)
    viewer = client_for(make_user("viewer", perms=["view_console"]))

    def states():
        return {p["node"]: p["state"] for p in viewer.get("/console/api/fleet").json()["processes"]}

    assert states()["dying-node"] == "stale"
    wait_until(lambda: "dying-node" not in states(), timeout=5, message="gone from the fleet")
    listing = viewer.get("/console/api/sessions", {"node": "dying-node"}).json()
    assert listing["total"] == 0
    assert "dying-node" not in viewer.get("/console/?part=fleet").content.decode()


@pytest.mark.django_db
def test_close_all_of_another_process_through_the_layer(console_redis, redis_url, settings,
                                                        events):  # noqa: F811
    """The drain of one process ("node:pid") from a console in another: a close event per
    session reaches that process through the shared layer, and the drain is logged."""
    import asyncio
    import uuid

    from asgiref.sync import async_to_sync
    from channels_redis.core import RedisChannelLayer

    prefix = f"wsmdrain-{uuid.uuid4().hex[:8]}"
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [redis_url], "prefix": prefix}}}
    settings.WSMONITOR = {**settings.WSMONITOR, "LOGS": True}
    far = RedisChannelLayer(hosts=[redis_url], prefix=prefix)  # the other process's layer
    channels = [async_to_sync(far.new_channel)() for _ in range(3)]
    now = time.time()
    sessions = {}
    for i, channel in enumerate(channels):
        entry = json.loads(fake_session(i, "far-node", now))
        entry["channel"] = channel
        sessions[entry["session_id"]] = json.dumps(entry)
    blind = json.loads(fake_session(9, "far-node", now))
    blind.update(kind="middleware", channel=None)  # unreachable from here: skipped
    sessions[blind["session_id"]] = json.dumps(blind)
    process = fake_process(console_redis, "far-node", sessions)
    assert process != publisher().process
    closer = client_for(make_user("closer", perms=["view_console", "close_sessions"]))
    response = closer.post(f"/console/processes/{process}/drain",
                           {"confirm": "yes", "reason": "deploy 7"},
                           headers={"Accept": "application/json"})
    assert response.json() == {"sent": 3, "skipped": 1, "code": 4012}

    async def received():
        return [await asyncio.wait_for(far.receive(channel), 5) for channel in channels]

    got = async_to_sync(received)()
    assert [(e["type"], e["code"], e["by"], e["reason"]) for e in got] == [
        ("wsmonitor.close", 4012, "console", "deploy 7")] * 3
    assert sorted(e["session_id"] for e in got) == sorted(
        json.loads(v)["session_id"] for v in sessions.values() if json.loads(v)["channel"])
    (drain,) = events("ws_console_drain")
    assert {k: drain[k] for k in ("staff_user", "process", "code", "sent", "skipped",
                                  "reason")} == {
        "staff_user": "closer", "process": process, "code": 4012, "sent": 3, "skipped": 1,
        "reason": "deploy 7"}


def full_ring(now, interval=0.5, history=900):
    """A 15-minute chart ring as a process with ``interval`` keeps it: every point."""
    count = int(history / interval) + 1
    points, connects, closes, received, sent, errors = [], 0, 0, 0, 0, 0
    for i in range(count):
        connects += 3 + i % 7
        closes += 2 + i % 5
        received += 400 + (i * 37) % 300
        sent += 800 + (i * 53) % 500
        errors += i % 11 == 0
        points.append({
            "t": now - history + i * interval, "active": 5000 + (i * 31) % 400,
            "connects": connects, "closes": closes, "in": received, "out": sent,
            "errors": errors, "codes": {"1000": closes // 2, "1001": closes // 3,
                                        "1006": closes // 6, "4012": closes // 12},
            "rtt": {"0.005": 40 * i, "0.025": 70 * i, "0.1": 79 * i, "+Inf": 80 * i}})
    return points


def load_fleet(client, nodes, per_node=5000):
    """Processes of ``per_node`` sessions each, each with a full 15-minute chart ring."""
    now = time.time()
    ring = full_ring(now)
    return [fake_process(client, node, {f"{i:08d}": fake_session(i, node, now)
                                        for i in range(per_node)}, points=ring)
            for node in nodes]


@pytest.mark.django_db
def test_ten_thousand_sessions_first_render_and_page_size(console_redis, capsys):
    """The reproducible figures of docs/console.md ("Measured")."""
    per_node = 5000
    load_fleet(console_redis, ("big-a", "big-b"), per_node)
    viewer = client_for(make_user("viewer", perms=["view_console"]))
    # First: nothing warmed in this test (templates compiled by earlier tests stay cached).
    started = time.perf_counter()
    response = viewer.get("/console/")
    first = time.perf_counter() - started
    assert response.status_code == 200
    size = len(response.content)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        viewer.get("/console/")
        timings.append(time.perf_counter() - started)
    sizes = [len(viewer.get("/console/", {"page": p}).content) for p in (2, 100, 200)]
    fleet = len(viewer.get("/console/", {"part": "fleet"}).content)
    api = viewer.get("/console/api/sessions", {"page": 3})
    filtered = viewer.get("/console/api/sessions", {"path": "room-5/", "node": "big-b"}).json()
    with capsys.disabled():
        print(f"\n10,000 sessions, 3 processes with full 15-min rings: first render "
              f"{first * 1000:.0f} ms, then {min(timings) * 1000:.0f}-{max(timings) * 1000:.0f} "
              f"ms; page 1 {size / 1024:.1f} KB (fleet part {fleet / 1024:.1f} KB); pages "
              f"{[round(s / 1024, 1) for s in sizes]} KB; JSON page "
              f"{len(api.content) / 1024:.1f} KB")
    assert "10000 open" in response.content.decode().replace("\n", " ")
    assert first < 1.0 and max(timings) < 1.0
    assert max([size, fleet, *sizes, len(api.content)]) < 200 * 1024
    assert filtered["total"] == len([i for i in range(per_node) if i % 97 == 5])


@pytest.mark.django_db
def test_a_big_fleet_with_full_rings_and_closes_stays_under_200_kb_a_page(console_redis,
                                                                          capsys):
    """Fourteen processes, each with a full chart ring and 300 recent closes of long paths."""
    now = time.time()
    ring = full_ring(now)
    for n in range(14):
        node = f"fleet-{n:02d}"
        process = fake_process(console_redis, node, {"x": fake_session(n, node, now)},
                               points=ring)
        closed = []
        for i in range(300):
            entry = json.loads(fake_session(i, node, now - 600))
            entry.update(path="/ws/" + "p" * 2000, user="u" * 2000, closed_at=now - i,
                         code=1000 + i % 2, closed_by="client", duration=12.5)
            closed.append(json.dumps(entry))
        console_redis.rpush(snapshot.CLOSED_KEY + process, *closed)
    publisher().sample(snapshot.get_config())  # this process is the fifteenth
    viewer = client_for(make_user("viewer", perms=["view_console"]))
    pages = [viewer.get("/console/", {"fleet_page": p}).content.decode() for p in (1, 2, 3)]
    assert [page.count('" data-process=') for page in pages] == [6, 6, 3]
    assert "15 processes" in pages[0]
    kept = int(pages[0].split(" recent closes kept")[0].rsplit(">", 1)[-1])
    assert kept >= 4200  # this process may have closes of its own
    sizes = [len(page.encode()) for page in pages]
    with capsys.disabled():
        print(f"\n15 processes with full rings and 300 closes each: fleet pages "
              f"{[round(size / 1024, 1) for size in sizes]} KB")
    assert max(sizes) < 200 * 1024
    assert len(viewer.get("/console/api/fleet").json()["processes"]) == 15


def test_a_full_ring_draws_at_most_two_points_per_pixel_column():
    now = time.time()
    ring = full_ring(now)
    row = charts.fleet_row({"process": "p"}, ring, now, now - 900)
    for chart in row["charts"]:
        for line in chart["lines"]:
            assert len(line["points"].split()) <= 2 * charts.WIDTH + 2, chart["label"]
    # Nothing drawn is lost: a one-sample spike survives the thinning.
    values = [(now - 900 + i * 0.5, 1.0) for i in range(1801)]
    values[900] = (values[900][0], 50.0)
    kept = charts.thin(values, now - 900, now)
    assert max(v for _, v in kept) == 50.0 and len(kept) <= 2 * charts.WIDTH + 2


# --- Charts -----------------------------------------------------------------------------------

def test_quantile_matches_prometheus_interpolation():
    buckets = {"0.005": 50, "0.025": 100, "0.1": 100, "+Inf": 100}
    assert charts.quantile(0.5, buckets) == pytest.approx(0.005)
    assert charts.quantile(0.75, buckets) == pytest.approx(0.015)
    assert charts.quantile(0.5, {"0.005": 0, "+Inf": 0}) is None
    assert charts.quantile(0.99, {"0.005": 0, "0.1": 0, "+Inf": 3}) == 0.1


def test_rates_never_go_negative():
    points = [{"t": 0, "c": 5}, {"t": 2, "c": 9}, {"t": 4, "c": 9}]
    assert charts.rates(points, "c", 60) == [(2, 120.0), (4, 0.0)]


def test_filters():
    sessions = [{"session_id": "abc", "consumer": "A", "node": "n1", "path": "/ws/x/",
                 "user": "Alice", "opened_at": 1},
                {"session_id": "abd", "consumer": "B", "node": "n2", "path": "/ws/y/",
                 "user": None, "opened_at": 2}]
    assert [s["session_id"] for s in store.filter_sessions(sessions, {"session": "ab"})] == \
        ["abd", "abc"]
    assert store.filter_sessions(sessions, {"user": "alice"})[0]["consumer"] == "A"
    assert store.filter_sessions(sessions, {"path": "/y/", "node": "n1"}) == []


# --- System checks ----------------------------------------------------------------------------

def test_console_checks(console):
    from wsmonitor.checks import check_console

    console.INSTALLED_APPS = [*console.INSTALLED_APPS, "django.contrib.sessions",
                              "django.contrib.staticfiles"]
    console.LOGIN_URL = "/console/"  # any page that resolves
    assert check_console(None) == []
    console.LOGIN_URL = "/nowhere/"
    assert [w.id for w in check_console(None)] == ["wsmonitor.W103"]
    console.LOGIN_URL = "https://sso.example.com/login"  # elsewhere: not ours to resolve
    console.MIDDLEWARE = []
    console.INSTALLED_APPS = [a for a in console.INSTALLED_APPS if a != "django.contrib.sessions"]
    warnings = check_console(None)
    assert [w.id for w in warnings] == ["wsmonitor.W101", "wsmonitor.W102"]
    assert "django.contrib.sessions" in warnings[0].msg
    assert "AuthenticationMiddleware" in warnings[1].msg
    console.ROOT_URLCONF = "wsmonitor.urls"  # no console: nothing to say
    assert check_console(None) == []


def test_group_memberships_where_the_layer_records_them(console):
    from channels.layers import channel_layers

    from wsmonitor.console.views import _display

    class Layer:
        _wsm_joined = {"specific.a!b": {"chat.lobby": time.time() - 90}}

    channel_layers.backends["console-test"] = Layer()
    try:
        groups = snapshot.group_memberships("specific.a!b", "console-test")
        assert [g for g, _ in groups] == ["chat.lobby"]
        assert snapshot.group_memberships("specific.other!c", "console-test") == []
        assert snapshot.group_memberships("specific.a!b", "no-such-alias") is None
        entry = {"session_id": "s", "opened_at": time.time(), "groups": groups,
                 "layer": "console-test", "closable": True, "process": "p"}
        shown = _display(entry, time.time(), "p")
        assert shown["groups"] == [
            {"name": "chat.lobby", "age": "1m 30s", "expires_in": "23h 58m"}]
        # The sessions list shows the time left too, not only the session page.
        listing = render_to_string("wsmonitor/console/_sessions.html", {
            "sessions": [{**shown, "node": "n", "pid": 1, "kind": "async"}], "total": 1,
            "all": 1, "page": 1, "pages": 1, "filters": {}})
        assert "1m 30s, 23h 58m left" in listing
    finally:
        del channel_layers.backends["console-test"]


@pytest.mark.parametrize("setting, check_id", [
    ({"CONSOLE": "yes"}, "wsmonitor.E020"),
    ({"CONSOLE_INTERVAL": 0}, "wsmonitor.E021"),
    ({"CONSOLE_HISTORY": 1, "CONSOLE_INTERVAL": 5}, "wsmonitor.E021"),
    ({"CONSOLE_PAGE_SIZE": 0}, "wsmonitor.E022"),
    ({"CONSOLE_TRACE_URL": "http://jaeger/trace/"}, "wsmonitor.E023"),
    ({"CONSOLE_DRAIN_CODE": 1012}, "wsmonitor.E024"),
])
def test_console_settings_are_checked(setting, check_id):
    from wsmonitor.conf import validate

    assert [problem[0] for problem in validate(setting)] == [check_id]
    assert validate({"CONSOLE_TRACE_URL": "http://jaeger/trace/{trace_id}",
                     "CONSOLE_DRAIN_CODE": 4012, "CONSOLE_INTERVAL": 0.5}) == []


async def test_without_a_registry_the_sampler_counts_sessions_without_describing_them(
        console, monkeypatch):
    communicator, session_id = await connect()

    def no_describe(*args):
        raise AssertionError("sessions are read by the page, not by the sampler")

    monkeypatch.setattr(snapshot, "describe", no_describe)
    publisher().sample(snapshot.get_config())
    assert publisher().document["active"] == len(snapshot.open_connections()) >= 1
    assert publisher().series[-1]["active"] == publisher().document["active"]
    monkeypatch.undo()
    assert session_id in publisher().local_state()[1]  # the page still reads every session
    await communicator.disconnect(timeout=3)
