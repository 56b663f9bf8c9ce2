"""The one echo and fan-out logic every variant runs, mixed into each consumer base class."""

from channels.generic.websocket import AsyncWebsocketConsumer

FANOUT_GROUP = "bench-fanout"


class EchoMixin:
    """Send every frame back unchanged."""

    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)


class FanoutMixin:
    """Join one group on connect; every frame received is sent to the whole group."""

    async def connect(self):
        await self.channel_layer.group_add(FANOUT_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(FANOUT_GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(
            FANOUT_GROUP, {"type": "fanout.message", "text": text_data}
        )

    async def fanout_message(self, event):
        await self.send(text_data=event["text"])


class PlainEcho(EchoMixin, AsyncWebsocketConsumer):
    pass


class PlainFanout(FanoutMixin, AsyncWebsocketConsumer):
    pass


def instrumented_echo():
    """Return the echo consumer built on wsmonitor's base class (imported only when used)."""
    from wsmonitor import InstrumentedAsyncWebsocketConsumer

    class InstrumentedEcho(EchoMixin, InstrumentedAsyncWebsocketConsumer):
        pass

    return InstrumentedEcho


def instrumented_fanout():
    """Return the fan-out consumer built on wsmonitor's base class (imported only when used)."""
    from wsmonitor import InstrumentedAsyncWebsocketConsumer

    class InstrumentedFanout(FanoutMixin, InstrumentedAsyncWebsocketConsumer):
        pass

    return InstrumentedFanout
