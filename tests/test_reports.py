"""Committed reports: never replaced by a run on other photos, and free of any machine's paths."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO

REPORTS = REPO / "reports"


def test_bench_handler_without_the_test_data_keeps_the_committed_report(tmp_path):
    """`make bench-handler` with no test split runs on the sample photos, says so, and writes
    build/reports/handler_cost.json; reports/handler_cost.json is left byte for byte."""
    committed = (REPORTS / "handler_cost.json").read_bytes()
    moved = REPO / "build" / "reports" / "handler_cost.json"
    moved.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "bench.handler_cost", "--data", str(tmp_path / "no-photos"),
                           "--batches", "2", "--rounds", "1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "12 sample photos" in done.stderr and "build/reports/handler_cost.json" in done.stderr
    assert (REPORTS / "handler_cost.json").read_bytes() == committed
    report = json.loads(moved.read_text())
    assert report["data"] == "tests/data/sample" and report["images"] == 12
    assert report["mar"] == "model_store/hotdog.mar"
    assert report["cpu_ms_per_request_by_batch"]["2"]["answered"] == 12


def strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


def test_committed_reports_hold_repo_relative_paths_only():
    absolute = {}
    for path in sorted(REPORTS.glob("*.json")):
        found = [s for s in strings(json.loads(path.read_text())) if os.path.isabs(s) and "/" in s[1:]]
        if found:
            absolute[path.name] = found[:3]
    assert not absolute, absolute
