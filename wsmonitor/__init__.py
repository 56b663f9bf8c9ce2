"""wsmonitor: observability for Django Channels WebSocket servers."""

__version__ = "0.1.0"
__all__ = [
    "InstrumentedAsyncWebsocketConsumer", "InstrumentedAsyncJsonWebsocketConsumer",
    "InstrumentedWebsocketConsumer", "InstrumentedJsonWebsocketConsumer",
]


def __getattr__(name):
    # Lazy, so importing wsmonitor does not import channels before Django is set up.
    if name in __all__:
        from . import consumers

        return getattr(consumers, name)
    raise AttributeError(f"module 'wsmonitor' has no attribute {name!r}")
