"""System checks name the setting that is wrong, with stable ids."""

import pytest
from django.test import override_settings

from wsmonitor.checks import check_prometheus_export, check_settings


def ids(value):
    with override_settings(WSMONITOR=value):
        return [error.id for error in check_settings(None)]


def test_defaults_and_a_full_valid_dict_pass():
    assert ids(None) == []
    assert ids({"NODE": "a", "METRICS": True, "LOGS": False, "CONFIGURE_LOGGING": False,
                "LOG_FORMAT": "console", "LOG_LEVEL": "DEBUG", "CLOSE_CODES": {4000: "full"},
                "CAPACITY": 5000, "TRACING": False, "TRACE_MODEL": "connection",
                "MESSAGE_SPANS": False, "SPLIT_CONNECTION_SPAN": True, "TRACEPARENT_FIELD": "tp",
                "INJECT_TRACEPARENT": True, "ERROR_CLOSE_CODES": [4000],
                "METRICS_ALLOWED_NETWORKS": ["10.0.0.0/8", "::1"],
                "METRICS_TOKEN": "0123456789abcdef"}) == []


@pytest.mark.parametrize("value, expected", [
    ([("NODE", "a")], "wsmonitor.E001"),
    ({"NODES": "a"}, "wsmonitor.E002"),
    ({"LOG_FORMAT": "xml"}, "wsmonitor.E003"),
    ({"CLOSE_CODES": {1000: "normal"}}, "wsmonitor.E004"),
    ({"CLOSE_CODES": {"4000": "string key"}}, "wsmonitor.E004"),
    ({"CLOSE_CODES": {4000: 1}}, "wsmonitor.E004"),
    ({"CLOSE_CODES": [4000]}, "wsmonitor.E004"),
    ({"NODE": ""}, "wsmonitor.E005"),
    ({"CAPACITY": 0}, "wsmonitor.E006"),
    ({"CAPACITY": "100"}, "wsmonitor.E006"),
    ({"METRICS": "yes"}, "wsmonitor.E007"),
    ({"LOG_LEVEL": "LOUD"}, "wsmonitor.E008"),
    ({"TRACE_MODEL": "frame"}, "wsmonitor.E009"),
    ({"TRACEPARENT_FIELD": ""}, "wsmonitor.E010"),
    ({"ERROR_CLOSE_CODES": [1006]}, "wsmonitor.E011"),
    ({"METRICS_ALLOWED_NETWORKS": "10.0.0.0/8"}, "wsmonitor.E012"),
    ({"METRICS_ALLOWED_NETWORKS": ["10.0.0.300/8"]}, "wsmonitor.E012"),
    ({"METRICS_TOKEN": "short"}, "wsmonitor.E013"),
])
def test_each_misconfiguration_has_its_id(value, expected):
    assert ids(value) == [expected]


def test_unknown_key_message_names_the_key():
    with override_settings(WSMONITOR={"NODES": "a"}):
        (error,) = check_settings(None)
    assert "NODES" in error.msg and "NODE" in error.hint


def test_nothing_serving_metrics_warns():
    with override_settings(ROOT_URLCONF="tests.urls_empty"):
        assert [w.id for w in check_prometheus_export(None)] == ["wsmonitor.W001"]
    # wsmonitor.urls serves /metrics; django_prometheus is not needed for that.
    with override_settings(INSTALLED_APPS=["channels", "wsmonitor"]):
        assert check_prometheus_export(None) == []


def test_close_codes_error_names_the_offending_entry():
    with override_settings(WSMONITOR={"CLOSE_CODES": {4000: "full", 1000: "normal"}}):
        (error,) = check_settings(None)
    assert error.id == "wsmonitor.E004"
    assert "entry 1000" in error.msg and "not an application close code" in error.msg


def test_an_invalid_setting_is_never_merged_the_defaults_apply():
    from wsmonitor.conf import DEFAULTS, get_config

    with override_settings(WSMONITOR={"CLOSE_CODES": 5, "NODE": "elsewhere", "CAPACITY": 10}):
        config = get_config()
        assert config["CLOSE_CODES"] == DEFAULTS["CLOSE_CODES"]
        assert config["CAPACITY"] is None and config["NODE"] != "elsewhere"


async def test_no_setting_can_break_a_connection():
    from channels.testing import WebsocketCommunicator

    from .consumers import Echo

    for value in ({"CLOSE_CODES": 5}, {"ERROR_CLOSE_CODES": 7}, {"HEARTBEAT_INTERVAL": "x"},
                  {"TRACE_MODEL": None}, {"NODE": 3}, "not a dict"):
        with override_settings(WSMONITOR=value):
            communicator = WebsocketCommunicator(Echo.as_asgi(), "/ws/")
            assert (await communicator.connect(timeout=3))[0], value
            await communicator.send_to(text_data="hi")
            assert await communicator.receive_from(timeout=3) == "hi"
            await communicator.disconnect(code=1000, timeout=3)


async def test_a_feature_registered_after_a_class_refuses_it_by_check_and_at_first_connection(
        caplog):
    """E018: the class was defined before the feature that cannot serve its kind existed."""
    import logging

    from channels.testing import WebsocketCommunicator

    from wsmonitor import InstrumentedAsyncWebsocketConsumer, features
    from wsmonitor.checks import check_features

    class WantsSyncOnly(InstrumentedAsyncWebsocketConsumer):
        wsmonitor_sync_only = True

        async def connect(self):
            await self.accept()

        async def receive(self, text_data=None, bytes_data=None):
            await self.send(text_data=text_data)

    class SyncOnly(features.Feature):
        name = "test_sync_only"
        kinds = frozenset({"sync"})
        unsupported_hint = "Use a sync consumer."

        def options(self, cls):
            return True if getattr(cls, "wsmonitor_sync_only", False) else None

    features.register(SyncOnly())
    caplog.set_level(logging.ERROR)
    try:
        (error,) = [e for e in check_features(None) if "WantsSyncOnly" in e.msg]
        assert error.id == "wsmonitor.E018"
        assert "test_sync_only" in error.msg and "Use a sync consumer." in error.msg
        for _ in range(2):  # refused, logged once, and the socket still served
            communicator = WebsocketCommunicator(WantsSyncOnly.as_asgi(), "/ws/")
            assert (await communicator.connect(timeout=3))[0]
            await communicator.send_to(text_data="hi")
            assert await communicator.receive_from(timeout=3) == "hi"
            await communicator.disconnect(code=1000, timeout=3)
    finally:
        features.unregister("test_sync_only")
    refused = [r.getMessage() for r in caplog.records if "ws_feature_refused" in r.getMessage()]
    assert len(refused) == 1 and "WantsSyncOnly" in refused[0], refused
