"""The Prometheus rules and config under deploy/ are valid, tested and documented."""

import re
import shutil
import subprocess

import pytest
import yaml

from .conftest import ROOT, need

PROM = ROOT / "deploy" / "prometheus"
RULES = PROM / "rules.yml"
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"


@pytest.fixture
def promtool():
    path = shutil.which("promtool")
    need(path, "promtool is not installed (apt-get install -y prometheus)")
    return path


def run(*args):
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=PROM)


def load_rules(path=RULES):
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def alert_rules():
    return [rule for rule in load_rules() if "alert" in rule]


def test_promtool_check_rules(promtool):
    result = run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_config(promtool):
    result = run(promtool, "check", "config", str(PROM / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool):
    assert RULE_TESTS
    result = run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


def test_every_alert_is_tested_firing_and_not_firing():
    firing, quiet = set(), set()
    for path in RULE_TESTS:
        spec = yaml.safe_load(path.read_text())
        assert spec["rule_files"] == ["../rules.yml"], path
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts without a firing test case"
    assert names - quiet == set(), "alerts without a not-firing test case"
    assert (firing | quiet) - names == set(), "test cases for alerts that do not exist"


def test_every_alert_has_for_severity_and_annotations():
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule.get("for", "")), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys(), name


def github_anchors(markdown):
    """Anchors GitHub generates for the headings of a Markdown document."""
    anchors = set()
    for line in markdown.splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


def test_runbook_urls_point_at_runbook_sections():
    anchors = github_anchors(RUNBOOK.read_text())
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url.rsplit("#", 1)[0].endswith("/docs/runbook.md"), url
        assert url.rsplit("#", 1)[1] in anchors, f"{rule['alert']}: no section for {url}"
    for section in ("thresholds", "close-codes", "pending-added-with-the-metric"):
        assert section in anchors


def test_rules_only_use_exported_metrics():
    from .test_deploy_dashboard import exported_metric_names, metric_names_in

    exported = exported_metric_names()
    for rule in load_rules():
        used = metric_names_in(rule["expr"])
        assert used, rule
        assert used <= exported, (rule.get("alert") or rule.get("record"), used - exported)


def runbook_queries():
    """PromQL lines of the runbook's ```promql blocks (indented lines continue the previous one)."""
    queries = []
    for block in re.findall(r"```promql\n(.*?)```", RUNBOOK.read_text(), re.S):
        for line in block.splitlines():
            code = line.split("#")[0].rstrip()
            if not code.strip():
                continue
            if line.startswith(" ") and queries:
                queries[-1] += " " + code.strip()
            else:
                queries.append(code.strip())
    return queries


def test_runbook_promql_parses(promtool, tmp_path):
    queries = runbook_queries()
    assert len(queries) > 20
    rules = {"groups": [{"name": "runbook", "rules": [
        {"record": f"runbook:query_{index}", "expr": query} for index, query in enumerate(queries)]}]}
    path = tmp_path / "runbook.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
