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


def run_bench(*args: str, timeout: float = 180) -> dict:
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: the benchmark then stops what it started (RabbitMQ, agents).
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    assert proc.returncode == 0, err[-4000:]
    return json.loads(out.strip().splitlines()[-1])


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
        "cpu_us_per_round_trip",
        "simulator_cpu_percent",
    ):
        assert key in result
    assert result["vms"] == 5 and result["false_faults"] == 0
    assert result["challenges_answered"] > 0
    # CPU time is read in clock ticks (10 ms): a 2 s run may show 0 µs, never None.
    assert result["cpu_us_per_round_trip"] is not None


def test_detection_latency_reports_its_fields() -> None:
    result = run_bench(
        "bench/detection_latency.py", "--vms", "3", "--interval-ms", "100", "--trials", "2"
    )
    assert result["trials"] == 2
    assert result["detection_ms_min"] > 0
    assert result["detection_ms_p50"] <= result["detection_ms_p99"] <= result["detection_ms_max"]


def test_fault_pipeline_reports_its_fields() -> None:
    pytest.importorskip("oslo_messaging")
    from guest_ha_dev.testing.rabbitmq import rabbitmq_installed

    if not rabbitmq_installed():
        pytest.skip("rabbitmq-server is not installed")
    result = run_bench(
        "bench/fault_pipeline.py", "--faults", "6", "--vms", "3", "--rate", "5", "--warmup", "2"
    )
    assert result["faults"] == 6 and result["warmup_faults"] == 2
    assert result["lost"] == 0 and result["duplicates"] == 0
    assert result["report_ms_p50"] > 0 and result["to_controller_ms_p50"] > 0


def test_sgm_latency_reports_its_fields() -> None:
    pytest.importorskip("oslo_messaging")
    from guest_ha_dev.testing.rabbitmq import rabbitmq_installed

    if not rabbitmq_installed():
        pytest.skip("rabbitmq-server is not installed")
    result = run_bench(
        "bench/sgm_latency.py",
        "--groups", "2", "--members", "3", "--rate", "20", "--duration", "2",
    )  # fmt: skip
    assert result["delivered"] == 40 * 2 and result["lost"] == 0
    assert result["broadcast_ms_p50"] > 0
    assert result["broadcasts_over_20ms"] <= 40
    assert result["broadcast_ms_max"] >= result["broadcast_ms_p99"] >= result["broadcast_ms_p50"]
    cpu = result["cpu_pct_of_one_core"]
    parts = {"simulated_guests", "rabbitmq", "controller", "agent_a", "agent_b"}
    assert set(cpu) == parts | {"total"}
    assert all(cpu[name] >= 0 for name in parts) and cpu["controller"] > 0
    assert cpu["total"] == pytest.approx(sum(cpu[name] for name in parts), abs=0.5)


@pytest.mark.c_guest
def test_guest_footprint_bench_compares_both_daemons() -> None:
    result = run_bench("bench/guest_footprint.py", "--seconds", "2", "--warmup", "1")
    for name in ("c", "python"):
        assert result[name]["rss_kib"] > 0 and result[name]["responses"] > 0
    assert result["ratio"]["rss"] > 1
    assert result["faults"] == 0


@pytest.mark.c_guest
def test_guest_c_fuzz_bench_runs() -> None:
    result = run_bench("bench/guest_c_fuzz.py", "--iterations", "3000")
    assert result["iterations"] == 3000 and result["findings"] == 0


def test_hostile_guests_reports_its_fields() -> None:
    result = run_bench(
        "bench/hostile_guests.py",
        "--good",
        "3",
        "--interval-ms",
        "100",
        "--duration",
        "2",
        "--warmup",
        "0.5",
    )
    for key in (
        "false_faults",
        "agent_cpu_percent",
        "agent_rss_growth_kib",
        "events_from_hostile",
        "nacks_sent_by_kind",
        "false_fault_episodes",
    ):
        assert key in result, key
    assert result["false_faults"] == 0
    assert result["false_fault_episodes"]["episodes"] == 0
    assert set(result["events_from_hostile"]) == set(result["hostile_kinds"])
    assert "flood" in result["hostile_kinds"] and "slowloris" in result["hostile_kinds"]
