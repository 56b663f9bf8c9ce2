"""The session registry: what a consumer writes, who may read it, what the command refuses."""

import asyncio
import json

import pytest
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser, User
from django.core.management import CommandError, call_command
from django.test import RequestFactory, override_settings

from wsmonitor import registry, views
from wsmonitor.checks import settings_errors

from . import consumers
from .conftest import eventually, stop_registry_task

NODE = "registry-node"


@pytest.fixture
def registry_settings(redis_url):
    config = {"NODE": NODE, "REGISTRY_URL": redis_url, "REGISTRY_TTL": 5}
    with override_settings(WSMONITOR=config):
        yield redis_url


def mine(url):
    return [s for s in registry.list_sessions(url) if s["node"] == NODE]


async def test_a_session_is_registered_while_open(registry_settings):
    url = registry_settings
    communicator = WebsocketCommunicator(consumers.Echo.as_asgi(), "/ws/echo/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_to(text_data="session")
    session_id = (await communicator.receive_from(timeout=3)).split()[0]
    try:
        (entry,) = await eventually(lambda: mine(url), timeout=5, message="registered")
        assert entry["session_id"] == session_id
        assert (entry["consumer"], entry["path"]) == ("Echo", "/ws/echo/")
        assert entry["layer"] == "default"
        assert entry["channel"].startswith("specific.") and entry["pid"] > 0
        key = registry.get_registry().key
        redis_client = registry._client(url)
        ttl = redis_client.ttl(key)
        redis_client.close()
        assert 0 < ttl <= 5  # a dead process's hash expires on its own
        await communicator.disconnect(timeout=3)
        await eventually(lambda: mine(url) == [], timeout=5, message="removed on close")
    finally:
        await stop_registry_task()


def test_sessions_view_is_for_staff_only(registry_settings):
    request = RequestFactory().get("/wsmonitor/sessions")
    for user in (AnonymousUser(), User(username="someone", is_staff=False)):
        request.user = user
        assert views.sessions(request).status_code == 403
    request.user = User(username="admin", is_staff=True)
    response = views.sessions(request)
    assert response.status_code == 200 and "sessions" in json.loads(response.content)
    request.user = User(username="former", is_staff=True, is_active=False)
    assert views.sessions(request).status_code == 403


def test_command_refusals(registry_settings):
    with pytest.raises(CommandError, match="1000 or 3000-4999"):
        call_command("wsmonitor_sessions", "close", "x", "--code", "1011")
    with pytest.raises(CommandError, match="No open session"):
        call_command("wsmonitor_sessions", "close", "no-such-session", "--code", "4000")
    with override_settings(WSMONITOR={"NODE": NODE}):
        with pytest.raises(CommandError, match="REGISTRY_URL"):
            call_command("wsmonitor_sessions", "list")


@pytest.mark.parametrize("setting, error", [
    ({"REGISTRY_URL": "http://example.com"}, "wsmonitor.E014"),
    ({"REGISTRY_URL": 6379}, "wsmonitor.E014"),
    ({"REGISTRY_TTL": 1}, "wsmonitor.E015"),
    ({"REGISTRY_TTL": "30"}, "wsmonitor.E015"),
])
def test_registry_settings_are_checked(setting, error):
    with override_settings(WSMONITOR=setting):
        assert [e.id for e in settings_errors()] == [error]


def test_valid_registry_settings_pass():
    with override_settings(WSMONITOR={"REGISTRY_URL": "redis://127.0.0.1:6379/0",
                                      "REGISTRY_TTL": 30}):
        assert settings_errors() == []


def test_multiprocess_mode_warns_about_an_export_that_never_sweeps(monkeypatch, tmp_path):
    from wsmonitor.checks import check_multiprocess_export

    assert check_multiprocess_export(None) == []  # not in multiprocess mode
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with override_settings(ROOT_URLCONF="django_prometheus.urls"):  # its export never sweeps
        assert [w.id for w in check_multiprocess_export(None)] == ["wsmonitor.W002"]
    with override_settings(ROOT_URLCONF="wsmonitor.urls"):
        assert check_multiprocess_export(None) == []
