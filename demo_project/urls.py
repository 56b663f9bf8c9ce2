from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
    path("", include("wsmonitor.urls")),  # /metrics, behind WSMONITOR's access rules
]
