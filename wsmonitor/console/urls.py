"""``path("wsmonitor/console/", include("wsmonitor.console.urls"))``: the live console."""

from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="wsmonitor-console"),
    path("sessions/<str:session_id>/", views.session, name="wsmonitor-console-session"),
    path("sessions/<str:session_id>/close", views.close, name="wsmonitor-console-close"),
    path("processes/<str:process>/drain", views.drain, name="wsmonitor-console-drain"),
    path("api/fleet", views.api_fleet, name="wsmonitor-console-api-fleet"),
    path("api/sessions", views.api_sessions, name="wsmonitor-console-api-sessions"),
    path("api/sessions/<str:session_id>", views.api_session, name="wsmonitor-console-api-session"),
    path("api/closed", views.api_closed, name="wsmonitor-console-api-closed"),
]
