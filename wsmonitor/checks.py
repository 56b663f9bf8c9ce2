"""System checks for the ``WSMONITOR`` setting."""

import logging

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .conf import DEFAULTS

_BOOLS = ("METRICS", "LOGS", "CONFIGURE_LOGGING")


def settings_errors():
    """Return the system-check errors of ``settings.WSMONITOR``."""
    user = getattr(settings, "WSMONITOR", None)
    if user is None:
        return []
    if not isinstance(user, dict):
        return [Error("WSMONITOR must be a dict.", id="wsmonitor.E001")]
    errors = []
    unknown = sorted(set(user) - set(DEFAULTS), key=str)
    if unknown:
        errors.append(Error(
            f"WSMONITOR has unknown keys: {', '.join(map(str, unknown))}.",
            hint=f"Known keys: {', '.join(DEFAULTS)}.", id="wsmonitor.E002"))
    if user.get("LOG_FORMAT", "json") not in ("json", "console"):
        errors.append(Error('WSMONITOR["LOG_FORMAT"] must be "json" or "console".',
                            id="wsmonitor.E003"))
    codes = user.get("CLOSE_CODES", {})
    if not isinstance(codes, dict) or not all(
        type(code) is int and 3000 <= code <= 4999 and isinstance(meaning, str)
        for code, meaning in codes.items()
    ):
        errors.append(Error(
            'WSMONITOR["CLOSE_CODES"] must map application close codes (int, 3000-4999) '
            "to their meaning (str).", id="wsmonitor.E004"))
    node = user.get("NODE")
    if node is not None and not (isinstance(node, str) and node):
        errors.append(Error('WSMONITOR["NODE"] must be a non-empty string or None.',
                            id="wsmonitor.E005"))
    capacity = user.get("CAPACITY")
    if capacity is not None and not (type(capacity) is int and capacity > 0):
        errors.append(Error('WSMONITOR["CAPACITY"] must be a positive int or None.',
                            id="wsmonitor.E006"))
    for key in _BOOLS:
        if not isinstance(user.get(key, True), bool):
            errors.append(Error(f'WSMONITOR["{key}"] must be True or False.',
                                id="wsmonitor.E007"))
    level = user.get("LOG_LEVEL", "INFO")
    if not (isinstance(level, str) and isinstance(logging.getLevelName(level), int)):
        errors.append(Error('WSMONITOR["LOG_LEVEL"] must be a logging level name such as "INFO".',
                            id="wsmonitor.E008"))
    return errors


@register(Tags.compatibility)
def check_settings(app_configs, **kwargs):
    return settings_errors()


@register(Tags.compatibility)
def check_prometheus_export(app_configs, **kwargs):
    if "django_prometheus" not in settings.INSTALLED_APPS:
        return [Warning(
            '"django_prometheus" is not in INSTALLED_APPS, so nothing serves /metrics.',
            hint='Add "django_prometheus" to INSTALLED_APPS and '
                 'path("", include("django_prometheus.urls")) to your URLconf.',
            id="wsmonitor.W001")]
    return []
