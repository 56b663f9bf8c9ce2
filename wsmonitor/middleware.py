"""ASGI middleware: the same books for WebSocket applications wsmonitor's consumers do not run.

    application = ProtocolTypeRouter({
        "websocket": WSMonitorMiddleware(AllowedHostsOriginValidator(URLRouter(routes))),
    })

It counts handshakes that fail before any consumer runs (no route, an origin
refused, an exception in middleware) and instruments third-party consumers.
An instrumented consumer inside adopts the middleware's connection, so each
socket is counted once, under that consumer's label.
"""

import asyncio

from . import features, tracing
from .conf import get_config
from .connection import Connection


class WSMonitorMiddleware:
    """Instrument every WebSocket connection that passes through ``app``."""

    def __init__(self, app, label="websocket"):
        self.app = app
        self.label = label  # the ``consumer`` label of what no instrumented consumer adopts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        config = get_config()
        tracer = tracing.get_tracer() if config["TRACING"] else None
        if not (config["METRICS"] or config["LOGS"] or tracer):
            return await self.app(scope, receive, send)
        scope = dict(scope)
        conn = Connection(scope, self.label, config, send, config["METRICS"], config["LOGS"],
                          tracer)
        if conn.metrics is not None:
            conn.metrics.prime_middleware()
        # A dict, not copied by channels' scope copies: the consumer inside finds it.
        scope["wsmonitor"] = {"connection": conn, "session_id": conn.session_id}

        async def counting_receive():
            while True:
                message = await receive()
                if not conn.adopted:
                    kind = message["type"]
                    if kind == "websocket.receive":
                        absorb = conn.absorb  # from features of the "middleware" kind
                        if absorb is not None:
                            try:
                                if absorb(message):
                                    continue  # swallowed: the application never sees it
                            except Exception as exc:  # a feature never breaks the connection
                                features.absorber_failed(conn, absorb, exc)
                        conn.received(message)
                    elif kind == "websocket.disconnect":
                        conn.disconnected(message.get("code"))
                return message

        crashed = reason = None
        entered = conn.enter()
        try:
            await self.app(scope, counting_receive, conn.send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            crashed = exc
            if conn.adopted:
                raise  # the consumer counted it
            if conn.accepted_at is not None:
                conn.error("application", exc)
            elif isinstance(exc, ValueError) and "No route found" in str(exc):
                reason = "no_route"  # channels' URLRouter: a refusal, not an app error
            elif _origin_unparsable(exc):
                # channels' OriginValidator raises on an Origin whose port is not a number:
                # client input, so the handshake is refused (403), not an application error.
                crashed = None
                await conn.send({"type": "websocket.close"})
                return
            else:
                conn.error("connect", exc)
            raise
        finally:
            conn.finish(crashed, reject_reason=reason)
            conn.leave(entered)


def _origin_unparsable(exc):
    """Whether ``exc`` is channels' origin check failing to parse the client's Origin header."""
    if not isinstance(exc, ValueError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.endswith(("channels/security/websocket.py",
                                                    "channels\\security\\websocket.py")):
            return True
        tb = tb.tb_next
    return False
