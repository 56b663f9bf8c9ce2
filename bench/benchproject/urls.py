from django.urls import include, path

from bench.benchproject import gcstats

urlpatterns = [path("gc/", gcstats.view), path("", include("django_prometheus.urls"))]
