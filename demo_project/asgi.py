import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo_project.settings")

from demo_project.otel import configure_tracing  # noqa: E402

configure_tracing()  # before Django loads, so the HTTP instrumentation sees the middleware
django_asgi_app = get_asgi_application()  # sets Django up before consumers are imported

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from demo_project.routing import websocket_urlpatterns  # noqa: E402
from wsmonitor import WSMonitorMiddleware  # noqa: E402

application = ProtocolTypeRouter({
    "http": ASGIStaticFilesHandler(django_asgi_app),  # the demo serves wsmonitor.js itself
    # The middleware counts handshakes refused before any consumer runs (unknown
    # path, foreign origin) under consumer="websocket"; the consumers count the rest.
    # AuthMiddlewareStack inside it: the console names each session's user.
    "websocket": WSMonitorMiddleware(AllowedHostsOriginValidator(
        AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))),
})
