"""System checks for the ``WSMONITOR`` setting."""

import ipaddress
import logging

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from .conf import DEFAULTS

_BOOLS = ("METRICS", "LOGS", "CONFIGURE_LOGGING", "TRACING", "MESSAGE_SPANS",
          "SPLIT_CONNECTION_SPAN", "INJECT_TRACEPARENT")


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
    if user.get("TRACE_MODEL", "message") not in ("message", "connection"):
        errors.append(Error('WSMONITOR["TRACE_MODEL"] must be "message" or "connection".',
                            id="wsmonitor.E009"))
    field = user.get("TRACEPARENT_FIELD", "traceparent")
    if not (isinstance(field, str) and field):
        errors.append(Error('WSMONITOR["TRACEPARENT_FIELD"] must be a non-empty string.',
                            id="wsmonitor.E010"))
    error_codes = user.get("ERROR_CLOSE_CODES", ())
    if not (isinstance(error_codes, (list, tuple, set, frozenset)) and all(
            type(code) is int and 3000 <= code <= 4999 for code in error_codes)):
        errors.append(Error('WSMONITOR["ERROR_CLOSE_CODES"] must be a list of application '
                            "close codes (int, 3000-4999).", id="wsmonitor.E011"))
    networks = user.get("METRICS_ALLOWED_NETWORKS")
    if networks is not None:
        try:
            if isinstance(networks, str):
                raise ValueError("a list is needed")
            for network in networks:
                ipaddress.ip_network(network, strict=False)
        except (TypeError, ValueError) as exc:
            errors.append(Error(
                f'WSMONITOR["METRICS_ALLOWED_NETWORKS"] must be a list of networks such as '
                f'"10.0.0.0/8": {exc}.', id="wsmonitor.E012"))
    token = user.get("METRICS_TOKEN")
    if token is not None and not (isinstance(token, str) and len(token) >= 16):
        errors.append(Error('WSMONITOR["METRICS_TOKEN"] must be a string of at least 16 '
                            "characters, or None.", id="wsmonitor.E013"))
    for key, check_id in (("HEARTBEAT_INTERVAL", "wsmonitor.E016"),
                          ("HEARTBEAT_TIMEOUT", "wsmonitor.E017")):
        value = user.get(key, DEFAULTS[key])
        if not (type(value) in (int, float) and 0 < value < float("inf")):
            errors.append(Error(f'WSMONITOR["{key}"] must be a positive number of seconds.',
                                id=check_id))
    errors.extend(_registry_errors(user))
    return errors


def _registry_errors(user):
    """The session registry's settings (wsmonitor.registry)."""
    errors = []
    url = user.get("REGISTRY_URL")
    if url is not None and not (isinstance(url, str)
                                and url.startswith(("redis://", "rediss://", "unix://"))):
        errors.append(Error('WSMONITOR["REGISTRY_URL"] must be None or a redis://, rediss:// '
                            "or unix:// URL.", id="wsmonitor.E014"))
    ttl = user.get("REGISTRY_TTL", 30)
    if not (type(ttl) in (int, float) and ttl >= 3):
        errors.append(Error('WSMONITOR["REGISTRY_TTL"] must be a number of seconds, at least 3.',
                            id="wsmonitor.E015"))
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


@register(Tags.compatibility)
def check_multiprocess_export(app_configs, **kwargs):
    """In multiprocess mode, /metrics must be wsmonitor's view, which sweeps dead processes."""
    from .multiprocess import directory

    if not directory():
        return []
    try:
        from django.urls import resolve

        from .views import metrics

        match = resolve("/metrics")
    except Exception:  # no /metrics, or a URLconf error Django reports itself
        return []
    if match.func is not metrics:
        return [Warning(
            "PROMETHEUS_MULTIPROC_DIR is set but /metrics is not wsmonitor's view, so the "
            "connections of processes that died stay in ws_connections_active until a process "
            "starts.",
            hint='Replace include("django_prometheus.urls") with include("wsmonitor.urls").',
            id="wsmonitor.W002")]
    return []


# --- The console (wsmonitor.console) ----------------------------------------------------------

_CONSOLE_APPS = ("django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions",
                 "django.contrib.staticfiles")
_CONSOLE_MIDDLEWARE = ("django.contrib.sessions.middleware.SessionMiddleware",
                       "django.middleware.csrf.CsrfViewMiddleware",
                       "django.contrib.auth.middleware.AuthenticationMiddleware")


@register(Tags.compatibility)
def check_console(app_configs, **kwargs):
    """What the console needs from the project, once its URLs are included."""
    from django.urls import NoReverseMatch, Resolver404, resolve, reverse
    from django.shortcuts import resolve_url

    try:
        reverse("wsmonitor-console")
    except NoReverseMatch:
        return []  # the console is not in the URLconf
    except Exception:
        return []  # a URLconf error Django reports itself
    problems = []
    missing = [app for app in _CONSOLE_APPS if app not in settings.INSTALLED_APPS]
    if missing:
        problems.append(Warning(
            f"The wsmonitor console is in the URLconf but INSTALLED_APPS lacks "
            f"{', '.join(missing)}.",
            hint="The console signs staff in with Django's auth and sessions and serves its "
                 "CSS and JavaScript as static files.", id="wsmonitor.W101"))
    middleware = getattr(settings, "MIDDLEWARE", None) or []
    missing = [m for m in _CONSOLE_MIDDLEWARE if m not in middleware]
    if missing:
        problems.append(Warning(
            f"The wsmonitor console needs {', '.join(missing)} in MIDDLEWARE.",
            hint="Without them nobody can sign in, and the close actions are refused "
                 "(they are CSRF-protected POSTs).", id="wsmonitor.W102"))
    login = resolve_url(settings.LOGIN_URL)
    if login.startswith("/"):
        try:
            resolve(login.split("?")[0])
        except Resolver404:
            problems.append(Warning(
                f"LOGIN_URL ({settings.LOGIN_URL!r}) does not resolve: the console sends "
                "signed-out visitors there.",
                hint='Add path("accounts/login/", LoginView.as_view(), name="login") or set '
                     "LOGIN_URL to your login page.", id="wsmonitor.W103"))
    return problems
