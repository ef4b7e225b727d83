"""The benchmarks run end to end and print one JSON object as their last line.
Tiny sizes: this checks the tooling, not performance (see docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_bench(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_heartbeat_scale_reports_its_fields() -> None:
    result = run_bench(
        "bench/heartbeat_scale.py",
        "--vms",
        "5",
        "--interval-ms",
        "100",
        "--duration",
        "2",
        "--warmup",
        "0.5",
    )
    for key in (
        "vms",
        "interval_ms",
        "duration_s",
        "agent_cpu_percent",
        "false_faults",
        "challenges_answered",
    ):
        assert key in result
    assert result["vms"] == 5 and result["false_faults"] == 0
    assert result["challenges_answered"] > 0


def test_detection_latency_reports_its_fields() -> None:
    result = run_bench(
        "bench/detection_latency.py", "--vms", "3", "--interval-ms", "100", "--trials", "2"
    )
    assert result["trials"] == 2
    assert result["detection_ms_min"] > 0
    assert result["detection_ms_p50"] <= result["detection_ms_p99"] <= result["detection_ms_max"]
