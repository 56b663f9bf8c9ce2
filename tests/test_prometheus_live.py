"""A real Prometheus scrapes a real daphne: the queries in docs/runbook.md answer what clients did."""

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from websockets.asyncio.client import connect

from .conftest import ROOT, eventually, free_port, need, wait_until

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
NODE = "promlive"


class Prometheus:
    """The Debian ``prometheus`` server on a loopback port, scraping one target every second."""

    def __init__(self, binary, tmp_path, target):
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "wsmonitor", "static_configs": [{"targets": [target]}]}],
        }
        config_path = tmp_path / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp_path / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config_path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
             "--enable-feature=exemplar-storage"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            wait_until(self._ready, timeout=20, message="prometheus /-/ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self):
        if self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path, **params):
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr, by):
        """Instant query; {value of label `by`: number}."""
        result = self.api("query", query=expr)["result"]
        return {sample["metric"].get(by, ""): float(sample["value"][1]) for sample in result}

    def log(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def prometheus_factory(tmp_path):
    binary = shutil.which("prometheus")
    need(binary, "the prometheus server is not installed (apt-get install -y prometheus)")
    started = []

    def start(target):
        server = Prometheus(binary, tmp_path, target)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def client(server, path):
    return connect(server.ws_url(path), origin=f"http://127.0.0.1:{server.port}",
                   open_timeout=5, close_timeout=5)


async def until(prom, expr, by, expected, timeout=15):
    """Poll an instant query until it answers ``expected`` (the scrape has caught up)."""
    seen = {}

    def check():
        seen["last"] = prom.query(expr, by)
        return seen["last"] == expected

    try:
        await eventually(check, timeout=timeout, interval=0.25, message=expr)
    except AssertionError:
        raise AssertionError(f"{expr}: expected {expected}, last answer {seen.get('last')}\n"
                             f"{prom.log()}") from None


class ChatClient:
    """A chat member that answers wsmonitor heartbeat pings, as wsmonitor.js does."""

    def __init__(self, ws):
        self.ws, self.messages = ws, []
        self.task = asyncio.create_task(self._read())

    async def _read(self):
        async for raw in self.ws:
            data = json.loads(raw)
            if data.get("type") == "wsmonitor.ping":
                await self.ws.send(json.dumps({"type": "wsmonitor.pong", "id": data["id"]}))
            else:
                self.messages.append(data)

    async def close(self):
        await self.ws.close()
        await asyncio.wait_for(self.task, 5)


async def test_prometheus_answers_what_the_clients_did(start_daphne, prometheus_factory):
    # Heartbeats every 0.5 s (the demo's ChatConsumer opts in), so RTTs show within seconds.
    daphne = start_daphne(name=NODE, env={"WSMONITOR_HEARTBEAT_INTERVAL": "0.5"})
    prom = prometheus_factory(f"127.0.0.1:{daphne.port}")
    await until(prom, 'up{job="wsmonitor"}', "job", {"wsmonitor": 1})

    sockets = [await client(daphne, "/ws/echo/") for _ in range(5)]
    for round_ in range(5):
        for ws in sockets:
            await ws.send(f"hello {round_}")
            assert await asyncio.wait_for(ws.recv(), 5) == f"hello {round_}"
    sel = f'node="{NODE}", consumer="EchoConsumer"'

    # Recipe: open connections per node (sum over consumers and processes).
    await until(prom, "sum by (node) (ws_connections_active)", "node", {NODE: 5})
    await until(prom, f"sum by (direction) (ws_messages_total{{{sel}}})", "direction",
                {"in": 25, "out": 25})

    sockets[0].transport.abort()  # no close frame: 1006
    await sockets[1].close(code=1000)
    await sockets[2].close(code=4000)  # declared by the demo
    await until(prom, f"sum by (code) (ws_closes_total{{{sel}}}) > 0", "code",
                {"1006": 1, "1000": 1, "4000": 1})
    # Recipe: abnormal-closure rate per node. wsmonitor starts the common
    # code series at 0 with the consumer, so rate() sees the very first 1006.
    await eventually(
        lambda: prom.query('sum by (node) (rate(ws_closes_total{code="1006"}[5m]))', "node")
        .get(NODE, 0) > 0, timeout=10, interval=0.25, message="first 1006 in the rate")
    await until(prom, "sum by (node) (ws_connections_active)", "node", {NODE: 2})
    await until(prom, f"sum by (consumer) (ws_connects_total{{{sel}}})", "consumer",
                {"EchoConsumer": 5})

    sockets[3].transport.abort()
    await until(prom, f'ws_closes_total{{{sel}, code="1006"}}', "code", {"1006": 2})
    # Corrected recipe: connect and close rates side by side. All 5 connects
    # were counted before the first scrape saw the series, so (as for 1006) it
    # takes one more connect for the connect rate to leave 0.
    late = await client(daphne, "/ws/echo/")
    await until(prom, f"sum by (consumer) (ws_connects_total{{{sel}}})", "consumer",
                {"EchoConsumer": 6})
    side_by_side = ('label_replace(sum(rate(ws_connects_total[1m])), "rate", "connects", "", "")'
                    ' or label_replace(sum(rate(ws_closes_total[1m])), "rate", "closes", "", "")')
    await eventually(lambda: (lambda r: r.keys() == {"connects", "closes"} and min(r.values()) > 0)(
        prom.query(side_by_side, "rate")), timeout=10, interval=0.25, message=side_by_side)

    # The rules load, evaluate without errors, and the recording rules agree.
    await until(prom, "wsmonitor:ws_connections_active:sum_by_node", "node", {NODE: 2})
    await until(prom, "wsmonitor:ws_connections_capacity:max_by_node", "node", {NODE: 10000})
    await until(prom, "wsmonitor:ws_connections_utilisation:ratio_by_node", "node",
                {NODE: 2 / 10000})
    groups = prom.api("rules")["groups"]
    assert {group["name"] for group in groups} == {"wsmonitor.recording", "wsmonitor.alerts"}
    for group in groups:
        for rule in group["rules"]:
            assert rule["health"] != "err", (rule["name"], rule.get("lastError"))
    fds = prom.query("wsmonitor:process_fds:ratio_by_instance", "node")
    assert 0 < fds.get(NODE, 0) < 1, fds

    # Chat through the channel layer with heartbeats answered: layer sends, deliveries,
    # heartbeat RTTs and the saturation sampler's series reach Prometheus, and the
    # recording rules the dashboard reads carry them.
    chat = [ChatClient(await client(daphne, "/ws/chat/promlive/")) for _ in range(2)]
    for index in range(3):
        await chat[0].ws.send(json.dumps({"message": f"hi {index}"}))
    await eventually(lambda: all(len(member.messages) == 3 for member in chat), timeout=10,
                     message="chat messages delivered to both members")
    await until(prom, f'sum by (outcome) (ws_layer_sends_total{{node="{NODE}", kind="group_send"}})',
                "outcome", {"ok": 3, "full": 0, "error": 0})
    await until(prom, f'sum by (consumer) (ws_layer_delivery_seconds_count{{node="{NODE}"}})',
                "consumer", {"ChatConsumer": 6})
    await until(prom, f'sum by (node) (ws_layer_messages_dropped_total{{node="{NODE}"}})', "node",
                {NODE: 0})
    await eventually(lambda: prom.query(
        f'sum by (consumer) (ws_heartbeat_rtt_seconds_count{{node="{NODE}"}})', "consumer"
    ).get("ChatConsumer", 0) >= 4, timeout=10, interval=0.25, message="heartbeat RTTs scraped")
    await eventually(lambda: prom.query(
        f'wsmonitor:ws_heartbeat_pongs:rate1m_by_node_consumer{{node="{NODE}"}}', "consumer"
    ).get("ChatConsumer", 0) > 0, timeout=10, interval=0.25, message="pong rate recorded")
    rtt_p99 = (f'histogram_quantile(0.99, sum by (node, le) ('
               f'wsmonitor:ws_heartbeat_rtt_seconds_bucket:rate5m_by_node_consumer{{node="{NODE}"}}))')
    await eventually(lambda: 0 < prom.query(rtt_p99, "node").get(NODE, 0) < 5, timeout=10,
                     interval=0.25, message=rtt_p99)  # loopback: under the alert's 5 s
    await eventually(lambda: prom.query(
        f'wsmonitor:ws_layer_sends:rate1m_by_node_kind_outcome{{node="{NODE}", outcome="ok"}}',
        "kind").get("group_send", 0) > 0, timeout=10, interval=0.25, message="layer send rate")
    saturation = (f'label_replace(sum(ws_event_loop_lag_seconds_count{{node="{NODE}"}}), "s", "lag", "", "")'
                  f' or label_replace(sum(ws_send_backlog_bytes{{node="{NODE}"}}), "s", "backlog", "", "")'
                  f' or label_replace(sum(ws_channel_layer_backlog_messages{{node="{NODE}", alias="default"}}),'
                  f' "s", "layer", "", "")')
    await eventually(lambda: (lambda r: r.keys() == {"lag", "backlog", "layer"} and r["lag"] > 0)(
        prom.query(saturation, "s")), timeout=10, interval=0.25, message=saturation)
    for member in chat:
        await member.close()

    await sockets[4].close()
    await late.close()
    await until(prom, "sum by (node) (ws_connections_active)", "node", {NODE: 0})


async def test_prometheus_stores_exemplars_that_lead_to_traces(start_daphne, prometheus_factory):
    daphne = start_daphne(name="exemplars", env={"OTEL_TRACES_EXPORTER": "console"})
    prom = prometheus_factory(f"127.0.0.1:{daphne.port}")
    await until(prom, 'up{job="wsmonitor"}', "job", {"wsmonitor": 1})
    async with client(daphne, "/ws/echo/") as ws:
        for index in range(5):
            await ws.send(f"traced {index}")
            await asyncio.wait_for(ws.recv(), 5)

    def stored():
        now = time.time()
        data = prom.api("query_exemplars", query="ws_message_handling_seconds_bucket",
                        start=now - 300, end=now + 5)
        return {e["labels"]["trace_id"] for series in data for e in series["exemplars"]}

    traces = await eventually(stored, timeout=15, interval=0.25, message="exemplars stored")
    printed = {json.loads(line)["context"]["trace_id"][2:] for line in daphne.log().splitlines()
               if line.startswith("{") and '"name": "EchoConsumer receive"' in line}
    assert len(printed) == 5
    assert traces and traces <= printed  # each exemplar names a trace the server really made
