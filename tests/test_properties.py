"""A state machine over the consumer lifecycle: many connections, random paths, exact books."""

import asyncio
import collections
import logging

import pytest

from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.test import override_settings
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from wsmonitor.metrics import close_code_label
from wsmonitor.testing import MetricsSnapshot

from . import consumers

CONSUMERS = {"Echo": consumers.Echo, "FlakyEcho": consumers.FlakyEcho,
             "SyncEcho": consumers.SyncEcho, "SyncBeatEcho": consumers.SyncBeatEcho}
PING = '{"type":"wsmonitor.ping"'


async def next_output(communicator):
    """The next output that is not a heartbeat ping (this client does not answer them)."""
    while True:
        output = await communicator.receive_output(TIMEOUT)
        if not (output["type"] == "websocket.send" and (output.get("text") or "").startswith(PING)):
            return output
DECLARED = frozenset({4001, 4408, 4012})  # wsmonitor's own: heartbeat close, console drain
ALLOWED_CODES = {str(c) for c in range(1000, 1016)} | {"4001", "4408", "4012", "3xxx", "4xxx",
                                                       "invalid"}
close_codes = st.one_of(
    st.none(), st.sampled_from([1000, 1001, 1006, 1011, 1012, 4001, 4000, 3000]),
    st.integers(min_value=-5, max_value=70000),
)
LOOP = asyncio.new_event_loop()
TIMEOUT = 3


class Events(logging.Handler):
    def __init__(self):
        super().__init__()
        self.events = []

    def emit(self, record):
        if isinstance(record.msg, dict):
            self.events.append(record.msg)


class Lifecycle(RuleBasedStateMachine):
    connections = Bundle("connections")

    def __init__(self):
        super().__init__()
        self.before = MetricsSnapshot.collect()
        self.expected_closes = collections.Counter()  # (consumer, code label)
        self.expected_rejects = collections.Counter()  # (consumer, reason)
        self.accepted = collections.Counter()
        self.open = collections.Counter()
        self.live = {}  # id -> (name, communicator) of accepted connections still open
        self.zombies = 0  # SyncBeatEcho connections the heartbeat closed
        self.log = Events()
        logging.getLogger("wsmonitor").addHandler(self.log)

    def run(self, coroutine):
        return LOOP.run_until_complete(asyncio.wait_for(coroutine, TIMEOUT * 3))

    def closed(self, conn, code):
        name, communicator = conn
        self.expected_closes[name, close_code_label(code, DECLARED)] += 1
        self.open[name] -= 1
        del self.live[id(communicator)]

    @rule(target=connections, name=st.sampled_from(sorted(CONSUMERS)))
    def accept(self, name):
        async def go():
            communicator = WebsocketCommunicator(CONSUMERS[name].as_asgi(), "/ws/")
            connected, _ = await communicator.connect(timeout=TIMEOUT)
            assert connected
            return communicator
        communicator = self.run(go())
        self.accepted[name] += 1
        self.open[name] += 1
        self.live[id(communicator)] = name, communicator
        return name, communicator

    @rule(kind=st.sampled_from(["Denied", "ConnectRaises", "NeverAnswers", "SyncDenied",
                                "SyncConnectRaises"]),
          code=close_codes)
    def refused(self, kind, code):
        async def go():
            communicator = WebsocketCommunicator(getattr(consumers, kind).as_asgi(), "/ws/")
            await communicator.send_input({"type": "websocket.connect"})
            if kind.endswith("ConnectRaises"):
                try:
                    await communicator.wait(timeout=TIMEOUT)
                except RuntimeError:
                    return
                raise AssertionError("connect should have raised")
            if kind.endswith("Denied"):
                assert (await communicator.receive_output(TIMEOUT))["type"] == "websocket.close"
            await communicator.send_input({"type": "websocket.disconnect", "code": code})
            await communicator.wait(timeout=TIMEOUT)
        self.run(go())
        reason = {"Denied": "denied", "ConnectRaises": "error", "NeverAnswers": "abandoned"}[
            kind.removeprefix("Sync")]
        self.expected_rejects[kind, reason] += 1

    @rule(conn=connections, text=st.text(min_size=1, max_size=20).filter(lambda t: t not in {
        "boom", "close", "close-4001", "session", "group-boom", "whoami"}))
    def message(self, conn, text):
        _, communicator = conn

        async def go():
            await communicator.send_to(text_data=text)
            assert (await next_output(communicator))["text"] == text
        self.run(go())

    @rule(conn=consumes(connections), code=close_codes)
    def client_close(self, conn, code):
        self.run(self._disconnect(conn[1], code))
        self.closed(conn, code)

    @rule(conn=consumes(connections), trigger=st.sampled_from(["boom", "group-boom"]))
    def handler_raises(self, conn, trigger):
        async def go():
            await conn[1].send_to(text_data=trigger)
            try:
                await conn[1].wait(timeout=TIMEOUT)
            except (RuntimeError, ValueError):
                return
            raise AssertionError("the handler should have raised")
        self.run(go())
        self.closed(conn, 1011)

    @rule(conn=consumes(connections), which=st.sampled_from(["close", "close-4001"]),
          answer=close_codes)
    def server_close(self, conn, which, answer):
        async def go():
            await conn[1].send_to(text_data=which)
            assert (await next_output(conn[1]))["type"] == "websocket.close"
        self.run(go())
        self.run(self._disconnect(conn[1], answer))  # whatever the peer answers
        self.closed(conn, 4001 if which == "close-4001" else 1000)

    @rule(conn=consumes(connections))
    def layer_error(self, conn):
        name, communicator = conn
        if name != "FlakyEcho":
            self.run(self._disconnect(communicator, 1000))
            self.closed(conn, 1000)
            return

        async def go():
            await communicator.send_to(text_data="whoami")
            channel = (await next_output(communicator))["text"]
            get_channel_layer("flaky").fail(channel)
            try:
                await communicator.wait(timeout=TIMEOUT)
            except TimeoutError as exc:
                assert "Timeout reading" in str(exc)
                return
            raise AssertionError("the layer error should have ended the consumer")
        self.run(go())
        self.closed(conn, 1011)

    @rule(conn=consumes(connections))
    def zombie(self, conn):
        """A heartbeat client answers one ping, then falls silent: closed with 4408."""
        name, communicator = conn
        if name != "SyncBeatEcho":
            self.run(self._disconnect(communicator, 1001))
            self.closed(conn, 1001)
            return

        async def go():
            while True:
                output = await communicator.receive_output(TIMEOUT)
                if (output.get("text") or "").startswith(PING):
                    ident = int(output["text"].rsplit(":", 1)[1].rstrip("}"))
                    await communicator.send_to(
                        text_data=f'{{"type":"wsmonitor.pong","id":{ident}}}')
                    break
            assert (await next_output(communicator)) == {"type": "websocket.close", "code": 4408}
            await self._disconnect(communicator, 4408)  # the client echoes the close
        self.run(go())
        self.closed(conn, 4408)
        self.zombies += 1

    @rule(conn=consumes(connections))
    def shutdown(self, conn):
        async def go():
            conn[1].future.cancel()
            try:
                await conn[1].future
            except asyncio.CancelledError:
                pass
        self.run(go())
        self.closed(conn, 1006)

    async def _disconnect(self, communicator, code):
        await communicator.send_input({"type": "websocket.disconnect", "code": code})
        await communicator.wait(timeout=TIMEOUT)

    @invariant()
    def gauge_is_exact(self):
        now = MetricsSnapshot.collect()
        for name in CONSUMERS:
            assert (now.value("ws_connections_active", consumer=name)
                    - self.before.value("ws_connections_active", consumer=name)) == self.open[name]

    def teardown(self):
        # Close what is still open, then check the books.
        for conn in list(self.live.values()):
            self.run(self._disconnect(conn[1], 1000))
            self.closed(conn, 1000)
        logging.getLogger("wsmonitor").removeHandler(self.log)
        after = MetricsSnapshot.collect()
        still_open = sum(self.open.values())
        assert still_open == 0
        for name in CONSUMERS:
            delta = (after.value("ws_connections_active", consumer=name)
                     - self.before.value("ws_connections_active", consumer=name))
            assert delta == self.open[name]
            closes = (after.value("ws_closes_total", consumer=name)
                      - self.before.value("ws_closes_total", consumer=name))
            assert closes == self.accepted[name] - self.open[name]
            connects = (after.value("ws_connects_total", consumer=name)
                        - self.before.value("ws_connects_total", consumer=name))
            assert connects == self.accepted[name]
        for (name, label), count in self.expected_closes.items():
            got = (after.value("ws_closes_total", consumer=name, code=label)
                   - self.before.value("ws_closes_total", consumer=name, code=label))
            assert got == count, (name, label, got, count)
        for (name, reason), count in self.expected_rejects.items():
            got = (after.value("ws_connects_rejected_total", consumer=name, reason=reason)
                   - self.before.value("ws_connects_rejected_total", consumer=name, reason=reason))
            assert got == count, (name, reason, got, count)
        assert after.label_values("ws_closes_total", "code") <= ALLOWED_CODES
        # The bounded sets (the middleware's own values included: other tests use it).
        assert after.label_values("ws_connects_rejected_total", "reason") <= {
            "denied", "error", "abandoned", "no_route"}
        assert after.label_values("ws_errors_total", "stage") <= {
            "connect", "receive", "disconnect", "send", "handler", "layer", "application"}
        # Exactly one ws_open and, for every closed session, one ws_close.
        opens = collections.Counter(e["session_id"] for e in self.log.events
                                    if e["event"] == "ws_open")
        closes = collections.Counter(e["session_id"] for e in self.log.events
                                     if e["event"] == "ws_close")
        assert set(opens.values()) <= {1} and set(closes.values()) <= {1}
        assert len(opens) == sum(self.accepted.values())
        assert len(closes) == sum(self.accepted.values()) - still_open
        assert set(closes) <= set(opens)
        # The heartbeat's books: one timeout per zombie, each close said to be the heartbeat's.
        timeouts = (after.value("ws_heartbeat_timeouts_total", consumer="SyncBeatEcho")
                    - self.before.value("ws_heartbeat_timeouts_total", consumer="SyncBeatEcho"))
        assert timeouts == self.zombies
        consumer_of = {e["session_id"]: e["consumer"] for e in self.log.events
                       if e["event"] == "ws_open"}
        by_heartbeat = [e for e in self.log.events if e["event"] == "ws_close"
                        and e["closed_by"] == "heartbeat"]
        assert len(by_heartbeat) == self.zombies
        assert all(e["code"] == 4408 and consumer_of[e["session_id"]] == "SyncBeatEcho"
                   for e in by_heartbeat)


Lifecycle.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# 60 examples of up to 25 steps take about a minute; on a loaded two-core machine they took over
# the suite's 120 s default, and the timeout then surfaced as hypothesis' "flaky" error.
@pytest.mark.timeout(600)
@override_settings(CHANNEL_LAYERS={
    "default": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    "flaky": {"BACKEND": "tests.consumers.FlakyLayer"},
})
def test_lifecycle_books_stay_exact():
    Lifecycle.TestCase().runTest()
