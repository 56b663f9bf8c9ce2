from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import TemplateView

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="index"),
    # /metrics (behind WSMONITOR's access rules; sweeps dead processes in multiprocess mode)
    # and /wsmonitor/sessions (staff only).
    path("", include("wsmonitor.urls")),
    # The live console (staff with wsmonitor's view permission) and its login page.
    path("wsmonitor/console/", include("wsmonitor.console.urls")),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
]
