"""self.stream(name): first chunk, intervals, chunk count, duration, outcome; span attributes."""

import asyncio

from channels.testing import WebsocketCommunicator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from wsmonitor import InstrumentedAsyncJsonWebsocketConsumer
from wsmonitor.testing import MetricsSnapshot, assert_metric_diff, metric_diff

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("tests")  # a private provider: the global one stays untouched


class Answers(InstrumentedAsyncJsonWebsocketConsumer):
    wsmonitor_streams = ("answer",)

    async def connect(self):
        await self.accept()

    async def receive_json(self, content, **kwargs):
        with tracer.start_as_current_span("message"):
            try:
                async with self.stream(content["name"]) as s:
                    await asyncio.sleep(content.get("think", 0))
                    for index in range(content["chunks"]):
                        if index:
                            await asyncio.sleep(0.02)
                        if index == content.get("fail_at"):
                            raise ValueError("the model failed")
                        await s.send({"chunk": index})
            except ValueError:
                await self.send_json({"error": "failed"})
                return
        await self.send_json({"done": True})


async def run(*requests):
    communicator = WebsocketCommunicator(Answers.as_asgi(), "/ws/answers/")
    assert (await communicator.connect(timeout=3))[0]
    replies = []
    for request in requests:
        await communicator.send_json_to(request)
        while True:
            reply = await communicator.receive_json_from(timeout=3)
            replies.append(reply)
            if "done" in reply or "error" in reply:
                break
    await communicator.disconnect(timeout=3)
    return replies


async def test_stream_histograms_record_what_the_client_received():
    exporter.clear()
    before = MetricsSnapshot.collect()
    replies = await run({"name": "answer", "chunks": 4, "think": 0.1})
    assert replies == [{"chunk": 0}, {"chunk": 1}, {"chunk": 2}, {"chunk": 3}, {"done": True}]
    labels = {"consumer": "Answers", "stream": "answer"}
    assert_metric_diff(before, "ws_stream_first_chunk_seconds_count", 1, **labels)
    first = metric_diff(before, "ws_stream_first_chunk_seconds_sum", **labels)
    assert 0.1 <= first < 0.5  # the "thinking" before the first chunk
    assert_metric_diff(before, "ws_stream_first_chunk_seconds_bucket", 0, le="0.05", **labels)
    assert_metric_diff(before, "ws_stream_chunk_interval_seconds_count", 3, **labels)
    intervals = metric_diff(before, "ws_stream_chunk_interval_seconds_sum", **labels)
    assert 0.06 <= intervals < 0.5
    assert_metric_diff(before, "ws_stream_chunks_sum", 4, **labels)
    assert_metric_diff(before, "ws_stream_chunks_count", 1, **labels)
    duration = metric_diff(before, "ws_stream_duration_seconds_sum", **labels)
    assert first + intervals <= duration < 1.0
    assert_metric_diff(before, "ws_streams_total", 1, outcome="ok", **labels)
    # Stream chunks are the application's messages: 4 chunks + "done" went out.
    assert_metric_diff(before, "ws_messages_total", 5, direction="out", consumer="Answers")

    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes)
    assert attributes["wsmonitor.stream.name"] == "answer"
    assert attributes["wsmonitor.stream.chunks"] == 4
    assert attributes["wsmonitor.stream.outcome"] == "ok"
    assert abs(attributes["wsmonitor.stream.time_to_first_chunk"] - first) < 1e-9
    assert abs(attributes["wsmonitor.stream.duration"] - duration) < 1e-9
    assert 0.02 <= attributes["wsmonitor.stream.chunk_interval.mean"] <= \
        attributes["wsmonitor.stream.chunk_interval.max"]


async def test_undeclared_names_fold_into_other_and_failures_are_counted():
    before = MetricsSnapshot.collect()
    await run({"name": "user-42-secret", "chunks": 2},
              {"name": "answer", "chunks": 3, "fail_at": 1})
    after = MetricsSnapshot.collect()
    assert "user-42-secret" not in after.label_values("ws_stream_chunks_count", "stream")
    assert_metric_diff(before, "ws_streams_total", 1, after, consumer="Answers",
                       stream="other", outcome="ok")
    assert_metric_diff(before, "ws_streams_total", 1, after, consumer="Answers",
                       stream="answer", outcome="error")
    assert_metric_diff(before, "ws_stream_chunks_sum", 1, after, consumer="Answers",
                       stream="answer")  # one chunk went out before the failure


async def test_no_recording_span_no_problem():
    class Plain(Answers):
        async def receive_json(self, content, **kwargs):
            async with self.stream("answer") as s:
                await s.send("text chunk")
                await s.send(b"binary chunk")
            await self.send_json({"done": True})

    before = MetricsSnapshot.collect()
    communicator = WebsocketCommunicator(Plain.as_asgi(), "/ws/plain/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_json_to({})
    assert await communicator.receive_from(timeout=3) == "text chunk"
    assert await communicator.receive_from(timeout=3) == b"binary chunk"
    assert await communicator.receive_json_from(timeout=3) == {"done": True}
    await communicator.disconnect(timeout=3)
    assert_metric_diff(before, "ws_stream_chunks_sum", 2, consumer="Plain", stream="answer")


async def test_a_stream_run_in_a_task_lands_on_a_span_of_the_session():
    """The pattern of the README and the demo: the handler returns, a task streams."""
    from wsmonitor.testing import span_exporter

    exported = span_exporter()

    class InTask(InstrumentedAsyncJsonWebsocketConsumer):
        wsmonitor_streams = ("answer",)

        async def connect(self):
            await self.accept()

        async def receive_json(self, content, **kwargs):
            self.answering = asyncio.get_running_loop().create_task(self.answer())

        async def answer(self):
            async with self.stream("answer") as s:
                for index in range(3):
                    await asyncio.sleep(0.01)
                    await s.send({"chunk": index})
            await self.send_json({"done": True})

    communicator = WebsocketCommunicator(InTask.as_asgi(), "/ws/in-task/")
    assert (await communicator.connect(timeout=3))[0]
    await communicator.send_json_to({"prompt": "x"})
    while "done" not in await communicator.receive_json_from(timeout=3):
        pass
    await communicator.disconnect(timeout=3)
    finished = exported.get_finished_spans()
    session = {s.attributes.get("websocket.session.id") for s in finished
               if s.name == "ws.connection"}
    streamed = [s for s in finished if "wsmonitor.stream.name" in (s.attributes or {})]
    assert len(streamed) == 1 and len(session) == 1
    span = streamed[0]
    assert span.attributes["websocket.session.id"] in session
    assert span.attributes["wsmonitor.stream.chunks"] == 3
    assert span.attributes["wsmonitor.stream.outcome"] == "ok"
    message = next(s for s in finished if s.name == "InTask receive")
    assert span.context.trace_id == message.context.trace_id  # the message that asked for it


def test_streams_on_a_sync_consumer_are_refused_when_the_class_is_defined():
    import pytest
    from django.core.exceptions import ImproperlyConfigured

    from wsmonitor import InstrumentedWebsocketConsumer

    with pytest.raises(ImproperlyConfigured, match="does not support sync consumers") as refused:
        type("SyncStreams", (InstrumentedWebsocketConsumer,), {"wsmonitor_streams": ("answer",)})
    assert "InstrumentedAsyncWebsocketConsumer" in str(refused.value)  # says what to do
