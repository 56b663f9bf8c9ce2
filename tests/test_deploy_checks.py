"""`manage.py check --deploy` warns while /metrics answers everyone."""

import pytest
from django.core.checks import run_checks
from django.test import override_settings


def deploy_ids(**settings):
    with override_settings(**settings):
        return [m.id for m in run_checks(include_deployment_checks=True)
                if m.id.startswith("wsmonitor.")]


def test_an_open_metrics_page_with_debug_off_warns_and_names_the_settings():
    with override_settings(DEBUG=False, WSMONITOR={}):
        (warning,) = [m for m in run_checks(include_deployment_checks=True)
                      if m.id == "wsmonitor.W003"]
    assert "METRICS_ALLOWED_NETWORKS" in warning.hint and "METRICS_TOKEN" in warning.hint


@pytest.mark.parametrize("settings", [
    {"DEBUG": True, "WSMONITOR": {}},
    {"DEBUG": False, "WSMONITOR": {"METRICS_ALLOWED_NETWORKS": ["10.0.0.0/8"]}},
    {"DEBUG": False, "WSMONITOR": {"METRICS_TOKEN": "0123456789abcdef"}},
    {"DEBUG": False, "WSMONITOR": {}, "ROOT_URLCONF": "tests.urls_empty"},
    # Invalid settings that name a rule shut /metrics: it answers nobody, so no "open" warning.
    {"DEBUG": False, "WSMONITOR": {"METRICS_TOKEN": 5}},
])
def test_no_warning_in_development_with_a_rule_or_without_a_metrics_page(settings):
    assert "wsmonitor.W003" not in deploy_ids(**settings)


def test_only_deploy_checks_warn():
    with override_settings(DEBUG=False, WSMONITOR={}):
        assert "wsmonitor.W003" not in [m.id for m in run_checks()]


def test_django_prometheus_export_is_named_as_open():
    with override_settings(DEBUG=False, ROOT_URLCONF="tests.urls_django_prometheus"):
        (warning,) = [m for m in run_checks(include_deployment_checks=True)
                      if m.id == "wsmonitor.W003"]
    assert "django_prometheus" in warning.msg and "wsmonitor.urls" in warning.hint
