"""wsmonitor: observability for Django Channels WebSocket servers."""

__version__ = "0.2.0"
__all__ = [
    "InstrumentedAsyncWebsocketConsumer", "InstrumentedAsyncJsonWebsocketConsumer",
    "InstrumentedWebsocketConsumer", "InstrumentedJsonWebsocketConsumer", "WSMonitorMiddleware",
]


def __getattr__(name):
    # Lazy, so importing wsmonitor does not import channels before Django is set up.
    if name == "WSMonitorMiddleware":
        from .middleware import WSMonitorMiddleware

        return WSMonitorMiddleware
    if name in __all__:
        from . import consumers

        return getattr(consumers, name)
    raise AttributeError(f"module 'wsmonitor' has no attribute {name!r}")
