"""``path("", include("wsmonitor.urls"))``: /wsmonitor/sessions (staff only)."""

from django.urls import path

from . import views

urlpatterns = [
    path("wsmonitor/sessions", views.sessions, name="wsmonitor-sessions"),
]
