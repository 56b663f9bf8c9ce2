"""Histograms observed inside a sampled span carry its trace as an OpenMetrics exemplar."""

import re

from channels.testing import WebsocketCommunicator
from django.test import Client

from wsmonitor.testing import span_exporter

from . import consumers

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


class ExemplarEcho(consumers.Echo):
    # A label of its own: a bucket takes one exemplar per second, so another test's
    # message in the same second would otherwise be the one exported.
    wsmonitor_label = "ExemplarEcho"


async def test_a_slow_message_leads_to_its_trace():
    exporter = span_exporter()
    communicator = WebsocketCommunicator(ExemplarEcho.as_asgi(), "/ws/")
    await communicator.connect(timeout=3)
    await communicator.send_to(text_data="traced")
    await communicator.receive_from(timeout=3)
    await communicator.disconnect(timeout=3)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "ExemplarEcho receive"]
    trace_id = format(span.context.trace_id, "032x")

    from asgiref.sync import sync_to_async

    response = await sync_to_async(Client().get)("/metrics", HTTP_ACCEPT=OPENMETRICS)
    assert response["Content-Type"].startswith("application/openmetrics-text")
    page = response.content.decode()
    exemplars = re.findall(
        r'^ws_message_handling_seconds_bucket\{[^}]*consumer="ExemplarEcho"[^}]*\} \S+ '
        r'# \{span_id="([0-9a-f]{16})",trace_id="([0-9a-f]{32})"\}', page, re.M)
    assert (format(span.context.span_id, "016x"), trace_id) in exemplars
    classic = (await sync_to_async(Client().get)("/metrics")).content.decode()
    assert "trace_id=" not in classic  # the classic text format carries none
