from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
    # /metrics (behind WSMONITOR's access rules; sweeps dead processes in multiprocess mode)
    # and /wsmonitor/sessions (staff only).
    path("", include("wsmonitor.urls")),
]
