"""HTTP views: /metrics (prometheus_client's registry behind wsmonitor's access settings, in
the format the scraper asks for, multiprocess-aware) and the staff-only session list."""

import hmac
import ipaddress
from functools import lru_cache

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.http import Http404, HttpResponse, HttpResponseForbidden, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from . import metrics as _metrics
from . import multiprocess, registry
from .conf import METRICS_REFUSED, get_config


@lru_cache(maxsize=1)
def _networks():
    networks = get_config()["METRICS_ALLOWED_NETWORKS"]
    if networks is None:
        return None
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


@receiver(setting_changed)
def _reset(*, setting, **kwargs):
    if setting == "WSMONITOR":
        _networks.cache_clear()


def allowed(request):
    """Whether the request passes every configured rule (address, then bearer token)."""
    networks = _networks()
    if networks is not None:
        try:
            address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            return False
        if not any(address in network for network in networks):
            return False
    token = get_config()["METRICS_TOKEN"]
    if token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.encode()):
            return False
    return True


@require_GET
def metrics(request):
    """Serve the Prometheus metrics page, or 403 when the request is not allowed."""
    refused = get_config()[METRICS_REFUSED]
    if refused is not None:
        return HttpResponseForbidden(f"metrics: forbidden: {refused}\n",
                                     content_type="text/plain")
    if not allowed(request):
        return HttpResponseForbidden("metrics: forbidden\n", content_type="text/plain")
    return _export(request)


def _export(request):
    """The registry in the format the scraper asks for (OpenMetrics carries exemplars).

    django-prometheus's ExportToDjangoView always answers in the classic text
    format, which cannot carry exemplars. In multiprocess mode dead processes
    are swept first (exemplars are not kept across processes).
    """
    path = multiprocess.directory()
    if path:
        multiprocess.sweep(path)
        registry_ = CollectorRegistry()
        merged = MultiProcessCollector(registry_, path=path)
        registry_.register(_metrics.MessagesCollector(merged.collect))
        registry_.register(multiprocess.ProcessFdsCollector(path, get_config()["NODE"]))
    else:
        registry_ = REGISTRY
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry_), content_type=content_type)


def sessions(request):
    """Open sessions of every node as JSON; staff only, 404 when the registry is off."""
    user = getattr(request, "user", None)
    if not (user is not None and user.is_active and user.is_staff):
        return JsonResponse({"error": "staff only"}, status=403)
    if not get_config()["REGISTRY_URL"]:
        raise Http404("the session registry is off")
    return JsonResponse({"sessions": registry.list_sessions()})
