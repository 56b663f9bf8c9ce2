"""HTTP views: the /metrics export (multiprocess-aware) and the staff-only session list."""

from django.http import Http404, HttpResponse, JsonResponse
from django_prometheus.exports import ExportToDjangoView
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from . import multiprocess, registry
from .conf import get_config


def metrics(request):
    """django-prometheus's export; in multiprocess mode it first sweeps dead processes."""
    path = multiprocess.directory()
    if not path:
        return ExportToDjangoView(request)
    multiprocess.sweep(path)
    scrape = CollectorRegistry()
    MultiProcessCollector(scrape, path=path)
    scrape.register(multiprocess.ProcessFdsCollector(path, get_config()["NODE"]))
    return HttpResponse(generate_latest(scrape), content_type=CONTENT_TYPE_LATEST)


def sessions(request):
    """Open sessions of every node as JSON; staff only, 404 when the registry is off."""
    user = getattr(request, "user", None)
    if not (user is not None and user.is_active and user.is_staff):
        return JsonResponse({"error": "staff only"}, status=403)
    if not get_config()["REGISTRY_URL"]:
        raise Http404("the session registry is off")
    return JsonResponse({"sessions": registry.list_sessions()})
