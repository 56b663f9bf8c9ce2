"""``path("", include("wsmonitor.urls"))``: /metrics (access rules; multiprocess-aware)
and /wsmonitor/sessions (staff only)."""

from django.urls import path

from . import views

urlpatterns = [
    path("metrics", views.metrics, name="wsmonitor-metrics"),
    path("wsmonitor/sessions", views.sessions, name="wsmonitor-sessions"),
]
