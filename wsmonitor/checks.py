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
    return settings_errors() + feature_errors()


@register(Tags.compatibility)
def check_settings(app_configs, **kwargs):
    return settings_errors()


@register(Tags.compatibility)
def check_features(app_configs, **kwargs):
    return feature_errors()


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
