"""The README's main-job command (the local heartbeat demo) runs end to end and
reports the outcomes it promises: faults detected for the frozen guests and the
unhealthy app, and a clean exit for the SIGTERM'd daemon."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_local_demo_detects_and_recovers() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "guest_ha_dev.sim.demo", "--vms", "2", "--interval-ms", "200"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "recovered" in out.stdout
    assert "exit received" in out.stdout
    faults_line = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith("faults:"))
    faults = ast.literal_eval(faults_line.split(":", 1)[1].strip())
    assert sorted(faults) == sorted(
        [
            ("heartbeat_lost", "sim-vm-0"),
            ("heartbeat_lost", "real-guestd-vm"),
            ("unhealthy", "sim-vm-1"),
        ]
    )
