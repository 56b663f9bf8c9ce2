"""/metrics served by django-prometheus's own export, for the system checks' tests."""

from django.urls import include, path

urlpatterns = [path("", include("django_prometheus.urls"))]
