"""HTTP views: the staff-only session list."""

from django.http import Http404, JsonResponse

from . import registry
from .conf import get_config


def sessions(request):
    """Open sessions of every node as JSON; staff only, 404 when the registry is off."""
    user = getattr(request, "user", None)
    if not (user is not None and user.is_active and user.is_staff):
        return JsonResponse({"error": "staff only"}, status=403)
    if not get_config()["REGISTRY_URL"]:
        raise Http404("the session registry is off")
    return JsonResponse({"sessions": registry.list_sessions()})
