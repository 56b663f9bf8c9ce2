from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
    # /metrics (django-prometheus's export, sweeping dead processes in multiprocess mode)
    # and /wsmonitor/sessions (staff only).
    path("", include("wsmonitor.urls")),
]
