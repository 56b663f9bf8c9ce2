"""The Grafana dashboard only queries series that wsmonitor and the rules really produce."""

import json
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

from .conftest import ROOT, need

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "wsmonitor-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"

SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "offset", "bool", "inf", "nan", "atan2"}


def wsmonitor_families():
    """{name: type} of every ``ws_*`` metric family wsmonitor exports.

    The instruments ``wsmonitor.metrics`` registers in the default registry, plus the
    families of :class:`wsmonitor.multiprocess.ProcessFdsCollector`, which only
    wsmonitor's multiprocess ``/metrics`` view registers (in its per-scrape registry).
    """
    import wsmonitor.layer_metrics  # noqa: F401
    import wsmonitor.server_kills  # noqa: F401
    import wsmonitor.streaming  # noqa: F401
    import wsmonitor.metrics  # noqa: F401  (registers the instruments)
    from prometheus_client import REGISTRY
    from wsmonitor.multiprocess import ProcessFdsCollector

    families = {family.name: family.type for family in REGISTRY.collect()
                if family.name.startswith("ws_")}
    with tempfile.TemporaryDirectory() as empty:
        families.update((family.name, family.type)
                        for family in ProcessFdsCollector(empty, "node").collect())
    return families


def exported_metric_names():
    """Sample names wsmonitor and prometheus_client's default collectors export."""
    from prometheus_client import REGISTRY

    names = set()
    for name, kind in wsmonitor_families().items():  # imports wsmonitor.metrics first
        names.update(name + suffix for suffix in SUFFIXES.get(kind, ("",)))
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def metric_names_in(expr):
    """Metric (and recorded series) names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])[A-Za-z_:][\w:]*", text):
        name = match.group()
        if name.lower() in KEYWORDS or re.match(r"\s*\(", text[match.end():]):
            continue  # a keyword, or a function / aggregation call
        names.add(name)
    return names


def recorded_names():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def panels(board=None):
    for panel in (board or dashboard())["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


def queries():
    for panel in panels():
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def test_exported_names_come_from_the_registry():
    names = exported_metric_names()
    assert {"ws_connections_active", "ws_closes_total", "ws_message_size_bytes_bucket",
            "ws_connections_capacity", "process_open_fds"} <= names


def test_panels_only_name_exported_metrics_or_recording_rules():
    exported, recorded = exported_metric_names(), recorded_names()
    used = set()
    for title, expr in queries():
        names = metric_names_in(expr)
        assert names, (title, expr)
        unknown = names - exported - recorded
        assert not unknown, f"panel {title!r} queries unknown series {sorted(unknown)}: {expr}"
        used |= names
    # Every recording rule made for the dashboard is used by a panel.
    assert recorded - used == set()


def panel_series():
    """Series the panels read: named directly, or read by a recording rule a panel uses."""
    used = set().union(*(metric_names_in(expr) for _, expr in queries()))
    recorded_exprs = {
        rule["record"]: rule["expr"]
        for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]
        if "record" in rule
    }
    underlying = set(used)
    for name in used & recorded_exprs.keys():
        underlying |= metric_names_in(recorded_exprs[name])
    return underlying


# The sample a panel has to read for a family to count as shown: a counter's rate, a
# histogram's buckets (its quantiles; _count or _sum alone hide the distribution).
SHOWN_BY = {"counter": "_total", "histogram": "_bucket", "gauge": ""}


def test_every_ws_metric_family_has_a_panel():
    families = wsmonitor_families()
    # Not vacuous: the families of every part of wsmonitor are there.
    assert {"ws_connections_active", "ws_heartbeat_rtt_seconds", "ws_layer_sends",
            "ws_send_backlog_bytes", "ws_streams", "ws_process_open_fds",
            "ws_process_start_time_seconds"} <= families.keys()
    underlying = panel_series()
    missing = sorted(name + SHOWN_BY[kind] for name, kind in families.items()
                     if name + SHOWN_BY[kind] not in underlying)
    assert not missing, f"wsmonitor metrics without a dashboard panel: {missing}"
    # prometheus_client's process collector, for the single-process file-descriptor panels.
    assert {"process_open_fds", "process_max_fds"} <= underlying


def test_dashboard_is_importable_and_templated():
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    assert board.get("id") is None  # importable into any Grafana
    variables = {var["name"]: var for var in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["node"]["definition"] == "label_values(ws_connections_active, node)"
    assert variables["consumer"]["definition"].startswith("label_values(ws_connections_active")
    assert variables["consumer"]["definition"].endswith(", consumer)")
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    # Panels filtered by the consumer variable also honour the node variable.
    for title, expr in queries():
        if "$consumer" in expr:
            assert "$node" in expr, title


def test_provisioning_examples_parse():
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/wsmonitor.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["type"] == "prometheus"


def test_panel_queries_are_valid_promql(tmp_path):
    """promtool parses every panel query (Grafana variables replaced by sample values)."""
    promtool = shutil.which("promtool")
    need(promtool, "promtool is not installed (apt-get install -y prometheus)")

    def concrete(expr):
        expr = re.sub(r"\$\{?__\w+\}?", "5m", expr)  # $__range, $__rate_interval, ...
        return re.sub(r"\$\{?\w+\}?", ".*", expr)  # $node, $consumer

    rules = {"groups": [{"name": "panels", "rules": [
        {"record": f"panel:query_{index}", "expr": concrete(expr)}
        for index, (_, expr) in enumerate(queries())]}]}
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run([promtool, "check", "rules", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("expr, names", [
    ('sum by (node) (rate(ws_closes_total{code="1006"}[5m])) > 0.1', {"ws_closes_total"}),
    ("process_open_fds / process_max_fds > 0.8 and on (instance, job) ws_connections_active",
     {"process_open_fds", "process_max_fds", "ws_connections_active"}),
    ('histogram_quantile(0.99, sum by (le) (rate(x_bucket{a=~"$node"}[$__rate_interval])))',
     {"x_bucket"}),
    ("(sum(a) or vector(0)) == 0 and on () sum(a offset 1d) >= 50", {"a"}),
    ("p * on (instance) group_left (node) group by (instance, node) (q)", {"p", "q"}),
])
def test_metric_name_extraction(expr, names):
    assert metric_names_in(expr) == names
