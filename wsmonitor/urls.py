"""``path("", include("wsmonitor.urls"))``: /metrics (instead of django_prometheus.urls)
and /wsmonitor/sessions (staff only)."""

from django.urls import path

from . import views

urlpatterns = [
    path("metrics", views.metrics, name="prometheus-django-metrics"),
    path("wsmonitor/sessions", views.sessions, name="wsmonitor-sessions"),
]
