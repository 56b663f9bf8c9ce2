"""System checks for the ``WSMONITOR`` setting."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured

from .conf import validate
from .features import class_options


def settings_errors():
    """Return the system-check errors of ``settings.WSMONITOR``."""
    return [Error(message, hint=hint, id=check_id)
            for check_id, message, hint in validate(getattr(settings, "WSMONITOR", None))]


def feature_errors():
    """Instrumented consumer classes that switch on a feature their kind does not support.

    Classes are refused when they are defined; this catches features registered
    after a class was defined.
    """
    import sys

    if "wsmonitor.consumers" not in sys.modules:
        return []
    from .consumers import InstrumentedMixin

    errors, seen, todo = [], set(), [InstrumentedMixin]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub in seen:
                continue
            seen.add(sub)
            todo.append(sub)
            try:
                class_options(sub, sub._wsm_kind)
            except ImproperlyConfigured as exc:
                errors.append(Error(str(exc), id="wsmonitor.E018"))
    return errors


def startup_problems():
    """What ``ready()`` logs, because servers such as daphne never run system checks."""
    return settings_errors() + feature_errors() + version_warnings()


@register(Tags.compatibility)
def check_settings(app_configs, **kwargs):
    return settings_errors()


@register(Tags.compatibility)
def check_features(app_configs, **kwargs):
    return feature_errors()


@register(Tags.compatibility)
def check_prometheus_export(app_configs, **kwargs):
    """Something must serve /metrics: wsmonitor's view, or another export of the registry."""
    if _metrics_view() is None:
        return [Warning(
            "Nothing serves /metrics, so Prometheus cannot read wsmonitor's metrics.",
            hint='Add path("", include("wsmonitor.urls")) to your URLconf (django-prometheus '
                 "is not needed: wsmonitor's view serves the same registry, with access rules "
                 "and the OpenMetrics format).",
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


# --- Where /metrics is served, who may read it, and the versions of other libraries -------

def _metrics_view():
    """The view that serves /metrics in the root URLconf, or None."""
    from django.urls import Resolver404, resolve

    try:
        return resolve("/metrics").func
    except Resolver404:
        return None
    except Exception:  # a URLconf error: Django's own checks report it
        return False


@register(Tags.security, deploy=True)
def check_metrics_access(app_configs, **kwargs):
    """With DEBUG off, wsmonitor's /metrics should not answer everyone."""
    from .conf import METRICS_REFUSED, get_config
    from .views import metrics

    if settings.DEBUG:
        return []
    view = _metrics_view()
    if not view:
        return []
    if view is not metrics:
        return [Warning(
            f"/metrics is served by {view.__module__}.{view.__qualname__}, which applies no "
            "access rule: anyone who can reach the server reads it.",
            hint='Serve it with path("", include("wsmonitor.urls")) and set '
                 'WSMONITOR["METRICS_ALLOWED_NETWORKS"] and/or WSMONITOR["METRICS_TOKEN"], '
                 "or keep it off public networks.",
            id="wsmonitor.W003")]
    config = get_config()
    if config[METRICS_REFUSED] is not None:
        return []  # shut until the settings are fixed: E004 and friends say what to fix
    if config["METRICS_ALLOWED_NETWORKS"] is None and config["METRICS_TOKEN"] is None:
        return [Warning(
            "/metrics answers every client: connection counts, consumer names and error "
            "rates are readable by anyone who can reach the server.",
            hint='Set WSMONITOR["METRICS_ALLOWED_NETWORKS"] (e.g. ["10.0.0.0/8"], your '
                 'Prometheus servers) and/or WSMONITOR["METRICS_TOKEN"] (sent by Prometheus '
                 "as a bearer token).",
            id="wsmonitor.W003")]
    return []


def version_warnings():
    """Installed libraries outside the versions wsmonitor is tested with (also logged at
    start-up: servers never run system checks)."""
    from . import compat

    return [Warning(problem, hint="See the supported versions in docs/versions.md.",
                    id="wsmonitor.W004") for problem in compat.startup_problems()]


@register(Tags.compatibility)
def check_versions(app_configs, **kwargs):
    return version_warnings()


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


# --- Channel layers (wsmonitor.layers) ---------------------------------------------------------

_REDIS_LAYERS = ("wsmonitor.layers.RedisChannelLayer", "wsmonitor.layers_redis.RedisChannelLayer")


@register(Tags.compatibility)
def check_layer_trace_prefix(app_configs, **kwargs):
    """With tracing on, a wsmonitor Redis layer whose random prefix cannot carry a traceparent."""
    from .conf import get_config
    from .envelope import TRACE_PREFIX

    try:
        if not get_config()["TRACING"]:
            return []
    except Exception:
        return []  # invalid settings: reported by wsmonitor's own checks
    problems = []
    for alias, layer in (getattr(settings, "CHANNEL_LAYERS", None) or {}).items():
        if not isinstance(layer, dict) or layer.get("BACKEND") not in _REDIS_LAYERS:
            continue
        config = layer.get("CONFIG") or {}
        length = config.get("random_prefix_length", 12)
        if (config.get("serializer_format", "msgpack") not in ("msgpack", "json")
                or not isinstance(length, int)):
            continue  # a serializer of the project's own: wsmonitor leaves its prefix alone
        if length < TRACE_PREFIX:
            problems.append(Warning(
                f'Channel layer "{alias}" has random_prefix_length {length}: the trace context '
                f"needs {TRACE_PREFIX} bytes to cross Redis, so handlers of its messages start "
                "traces of their own.",
                hint='Set "random_prefix_length": 40 in its CONFIG; every process sharing the '
                     "layer's prefix must use the same value, so change it while no old process "
                     "runs (docs/channel-layers.md).", id="wsmonitor.W201"))
    return problems
