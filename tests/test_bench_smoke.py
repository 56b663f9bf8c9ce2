"""Smoke test of the benchmark harness: ``python -m bench --quick`` end to end, in under a minute."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_reports_every_available_variant(tmp_path):
    out = tmp_path / "latest.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )
    elapsed = time.monotonic() - started
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert elapsed < 55, f"quick run took {elapsed:.1f} s"

    results = json.loads(out.read_text())
    available = {name for name, v in results["variants"].items() if v["available"]}
    assert "plain" in available
    for name, v in results["variants"].items():
        assert v["available"] or v["reason"], name

    (only_round,) = results["rounds"]
    echo, summary = results["summary"]["echo"], results["summary"]
    for name in available - {"layer-plain", "layer-instrumented", "mixed"}:
        row = only_round["echo"][name]
        assert row["msgs_per_s"] > 0 and row["messages"] == 5 * 20 and row["mismatches"] == 0, (name, row)
        assert echo[name]["ratio"]["median"] > 0, name
        assert summary["idle"][name]["kb_per_conn"] is not None, name
        assert summary["scrape"][name]["at_0"]["series"] > 0, name
    assert echo["plain"]["ratio"]["median"] == 1.0
    for name in available & {"layer-plain", "layer-instrumented"}:
        row = only_round["fanout"][name]
        assert row["deliveries_per_s"] > 0 and row["dropped"] == 0, (name, row)
        assert summary["fanout"][name]["ratio"]["median"] > 0, name
    if "metrics" in available:
        scrape = summary["scrape"]["metrics"]
        assert scrape["at_0"]["ws_series"] > 0
        assert scrape["at_0"]["series"] == scrape["at_many"]["series"]
        assert scrape["at_0"]["ws_connections_active"] == 0
        assert scrape["at_many"]["ws_connections_active"] == results["config"]["idle"]
    assert {t["variant"] for t in results["targets"]} >= {"metrics", "tracing", "layer-instrumented"}
    if "mixed" in available:  # one daphne, both consumers, each loaded in turn
        for kind, row in only_round["mixed"].items():
            assert row["messages"] == 5 * 20 and row["mismatches"] == 0, (kind, row)
        assert summary["mixed"]["metrics"]["capacity_ratio"]["median"] > 0
