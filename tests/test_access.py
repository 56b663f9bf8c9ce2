"""/metrics access rules: allowed networks and a bearer token."""

import urllib.error
import urllib.request

import pytest
from django.test import override_settings

TOKEN = "s3cret-token-0123456789"


def get(client, remote="127.0.0.1", token=None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.get("/metrics", REMOTE_ADDR=remote, **headers)


@pytest.fixture
def client():
    from django.test import Client

    with override_settings(ROOT_URLCONF="demo_project.urls"):
        yield Client()


def test_open_by_default(client):
    response = get(client, remote="203.0.113.9")
    assert response.status_code == 200
    assert b"ws_connections_active" in response.content or b"process_open_fds" in response.content


@override_settings(WSMONITOR={"METRICS_ALLOWED_NETWORKS": ["10.0.0.0/8", "::1/128"]})
@pytest.mark.parametrize("remote, status", [
    ("10.1.2.3", 200), ("::1", 200), ("11.0.0.1", 403), ("127.0.0.1", 403), ("garbage", 403),
])
def test_allowed_networks(client, remote, status):
    response = get(client, remote=remote)
    assert response.status_code == status
    if status == 403:
        assert b"process_open_fds" not in response.content


@override_settings(WSMONITOR={"METRICS_TOKEN": TOKEN})
@pytest.mark.parametrize("token, status", [
    (TOKEN, 200), (None, 403), ("wrong", 403), (TOKEN + "x", 403), ("é", 403),
])
def test_bearer_token(client, token, status):
    assert get(client, token=token).status_code == status


@override_settings(WSMONITOR={"METRICS_TOKEN": TOKEN, "METRICS_ALLOWED_NETWORKS": ["10.0.0.0/8"]})
def test_both_rules_must_pass(client):
    assert get(client, remote="10.0.0.1", token=TOKEN).status_code == 200
    assert get(client, remote="10.0.0.1").status_code == 403
    assert get(client, remote="192.0.2.1", token=TOKEN).status_code == 403


def test_only_get(client):
    assert client.post("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 405


def test_demo_under_daphne_serves_loopback_and_refuses_without_token(start_daphne):
    server = start_daphne(env={"WSMONITOR_METRICS_TOKEN": TOKEN})
    request = urllib.request.Request(server.http_url("/metrics"),
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200 and b"process_open_fds" in response.read()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.http_url("/metrics"), timeout=5)
    assert refused.value.code == 403
    server = start_daphne(env={"WSMONITOR_METRICS_NETWORKS": "10.0.0.0/8"}, name="closed")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(server.http_url("/metrics"), timeout=5)
    assert refused.value.code == 403


@pytest.mark.parametrize("value", [
    {"METRICS_TOKEN": TOKEN, "CLOSE_CODES": 5},  # a valid rule beside an invalid setting
    {"METRICS_ALLOWED_NETWORKS": ["10.0.0.0/8"], "NODES": "typo"},  # an unknown key
    {"METRICS_TOKEN": "short"},  # the rule itself invalid
    {"METRICS_TOKN": TOKEN},  # the rule misspelt
    [("METRICS_TOKEN", TOKEN)],  # not a dict: what it meant cannot be told
])
def test_invalid_settings_that_name_an_access_rule_shut_metrics(client, value):
    with override_settings(WSMONITOR=value):
        for remote, token in (("10.1.2.3", TOKEN), ("127.0.0.1", None), ("203.0.113.9", None)):
            response = get(client, remote=remote, token=token)
            assert response.status_code == 403, (value, remote)
            assert b"WSMONITOR is invalid" in response.content
            assert b"process_open_fds" not in response.content


def test_invalid_settings_without_an_access_rule_keep_the_default(client):
    with override_settings(WSMONITOR={"CLOSE_CODES": 5, "METRICS_TOKEN": None}):
        assert get(client, remote="203.0.113.9").status_code == 200


@pytest.mark.parametrize("value, redacted", [
    ({"REDACT_CLIENTS": True, "CLOSE_CODES": 5}, True),
    ({"REDACT_CLIENTS": "yes"}, True),  # invalid itself: the safe reading
    ({"REDACT_CLENTS": True}, True),  # misspelt
    ("not a dict", True),
    ({"REDACT_CLIENTS": False, "CLOSE_CODES": 5}, False),
    ({"CLOSE_CODES": 5}, False),
])
def test_invalid_settings_never_undo_redaction(value, redacted):
    from wsmonitor.conf import get_config
    from wsmonitor.connection import client_address

    with override_settings(WSMONITOR=value):
        config = get_config()
        assert config["REDACT_CLIENTS"] is redacted
        address = client_address({"client": ["198.51.100.7", 5000]}, config)
        assert address == ("redacted" if redacted else "198.51.100.7:5000")
