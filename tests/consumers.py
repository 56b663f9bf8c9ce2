"""Small consumers the tests drive; each exercises one lifecycle path."""

import asyncio

from channels.layers import InMemoryChannelLayer

from wsmonitor import InstrumentedAsyncJsonWebsocketConsumer, InstrumentedAsyncWebsocketConsumer


class Echo(InstrumentedAsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "boom":
            raise RuntimeError("receive failed")
        if text_data == "close-4001":
            await self.close(4001)
            return
        if text_data == "close":
            await self.close()
            return
        if text_data == "session":
            await self.send(text_data=self.session_id + " " + self.scope["wsmonitor"]["session_id"])
            return
        if text_data == "group-boom":
            await self.channel_layer.send(self.channel_name, {"type": "explode"})
            return
        await self.send(text_data=text_data, bytes_data=bytes_data)

    async def explode(self, event):
        raise ValueError("group handler failed")


class Denied(InstrumentedAsyncWebsocketConsumer):
    async def connect(self):
        await self.close()


class ConnectRaises(InstrumentedAsyncWebsocketConsumer):
    async def connect(self):
        raise RuntimeError("connect failed")


class NeverAnswers(InstrumentedAsyncWebsocketConsumer):
    async def connect(self):
        pass  # neither accept nor close: the client gives up


class DisconnectRaises(InstrumentedAsyncWebsocketConsumer):
    async def connect(self):
        await self.accept()

    async def disconnect(self, code):
        raise RuntimeError("disconnect failed")


class Json(InstrumentedAsyncJsonWebsocketConsumer):
    wsmonitor_label = "json-chat"

    async def connect(self):
        await self.accept()

    async def receive_json(self, content, **kwargs):
        await self.send_json({"echo": content})


class Quiet(Echo):
    wsmonitor_metrics = False


class Silent(Echo):
    wsmonitor_metrics = False
    wsmonitor_logs = False


class BrokenLayer(InMemoryChannelLayer):
    """An in-memory layer whose receive fails on demand, like channels_redis under redis-py 8."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fail = asyncio.Event()

    async def receive(self, channel):
        await self.fail.wait()
        raise TimeoutError("Timeout reading from 127.0.0.1:6379")


class FlakyLayer(InMemoryChannelLayer):
    """An in-memory layer whose receive fails for chosen channels, on demand."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.failing = {}

    def fail(self, channel):
        self.failing.setdefault(channel, asyncio.Event()).set()

    async def new_channel(self, prefix="specific."):
        # Hypothesis reseeds `random`, so channel names repeat across examples.
        channel = await super().new_channel(prefix)
        self.failing.pop(channel, None)
        return channel

    async def receive(self, channel):
        failed = asyncio.ensure_future(self.failing.setdefault(channel, asyncio.Event()).wait())
        received = asyncio.ensure_future(super().receive(channel))
        try:
            done, _ = await asyncio.wait({failed, received}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            received.cancel()
        if received in done and not received.cancelled():
            return received.result()
        raise TimeoutError("Timeout reading from 127.0.0.1:6379")


class FlakyEcho(Echo):
    channel_layer_alias = "flaky"

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "whoami":
            await self.send(text_data=self.channel_name)
            return
        await super().receive(text_data, bytes_data)


# The sync twins: the same behaviour written against channels' sync consumers.
from wsmonitor import InstrumentedJsonWebsocketConsumer, InstrumentedWebsocketConsumer  # noqa: E402


class SyncEcho(InstrumentedWebsocketConsumer):
    def connect(self):
        self.accept()

    def receive(self, text_data=None, bytes_data=None):
        if text_data == "boom":
            raise RuntimeError("receive failed")
        if text_data == "close-4001":
            self.close(4001)
            return
        if text_data == "close":
            self.close()
            return
        if text_data == "session":
            self.send(text_data=self.session_id + " " + self.scope["wsmonitor"]["session_id"])
            return
        if text_data == "group-boom":
            from asgiref.sync import async_to_sync

            async_to_sync(self.channel_layer.send)(self.channel_name, {"type": "explode"})
            return
        self.send(text_data=text_data, bytes_data=bytes_data)

    def explode(self, event):
        raise ValueError("group handler failed")


class SyncDenied(InstrumentedWebsocketConsumer):
    def connect(self):
        self.close()


class SyncConnectRaises(InstrumentedWebsocketConsumer):
    def connect(self):
        raise RuntimeError("connect failed")


class SyncDisconnectRaises(InstrumentedWebsocketConsumer):
    def connect(self):
        self.accept()

    def disconnect(self, code):
        raise RuntimeError("disconnect failed")


class SyncJson(InstrumentedJsonWebsocketConsumer):
    wsmonitor_label = "sync-json"

    def connect(self):
        self.accept()

    def receive_json(self, content, **kwargs):
        self.send_json({"echo": content})


class SyncBeatEcho(SyncEcho):
    """SyncEcho with the heartbeat: clients that answered once and then fell silent get 4408."""

    wsmonitor_heartbeat = 0.05
    wsmonitor_heartbeat_timeout = 0.2
