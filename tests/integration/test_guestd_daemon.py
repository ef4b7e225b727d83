"""The real guest daemon process against a pty standing in for the virtio port.

The test plays the host: it reads and writes the pty master with the protocol
core's encoder and decoder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from c_guest_support import c_guestd
from guest_ha.guest.client import HealthClient
from guest_ha.protocol import (
    HEARTBEAT,
)
from guest_ha_dev.testing.pty_host import PtyHost

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class FakeHost(PtyHost):
    """The host end of a pty: send host-to-guest PDUs, receive validated guest PDUs."""


class Daemon:
    def __init__(self, tmp_path: Path, port: str, *extra: str, cmd=None) -> None:
        self.checks = tmp_path / "checks.d"
        self.checks.mkdir(exist_ok=True)
        self.socket = str(tmp_path / "run" / "app.sock")
        self.log_path = tmp_path / "guestd.log"
        args = [
            "--config", "/dev/null", "--port", port, "--checks-dir", str(self.checks),
            "--app-socket", self.socket, "--check-interval-ms", "200", "--name", "test-vm",
            "--log-level", "debug", *extra,
        ]  # fmt: skip
        cmd = cmd or [sys.executable, "-m", "guest_ha.guest.daemon"]
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd + args, stdout=self.log_file, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, needle: str, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while needle not in self.log():
            if time.monotonic() > end:
                raise AssertionError(f"{needle!r} not logged:\n{self.log()}")
            time.sleep(0.02)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.log_file.close()


@pytest.fixture
def host():
    h = FakeHost()
    yield h
    h.close()


@pytest.fixture(params=["python", pytest.param("c", marks=pytest.mark.c_guest)])
def start(request, tmp_path):
    """Starts the Python daemon, or the C one (agents/guest-c) with the same flags."""
    started = []
    default_cmd = [c_guestd()] if request.param == "c" else None

    def _start(port: str, *extra: str, cmd=None) -> Daemon:
        d = Daemon(tmp_path, port, *extra, cmd=cmd or default_cmd)
        started.append(d)
        return d

    yield _start
    for d in started:
        d.stop()


def _script(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


def test_init_challenge_and_sigterm(host, start):
    daemon = start(host.path, "--interval-ms", "500", "--corrective-action", "reboot")
    init = host.register(interval_ms=700)
    assert init["name"] == "test-vm"
    assert init["interval_ms"] == 500
    assert init["corrective_action"] == "reboot"
    assert len(init["invocation_id"]) == 32
    resp = host.challenge()
    assert resp["health"] == "healthy"
    assert resp["reason"] == ""
    with HealthClient(daemon.socket) as client:
        status = client.status()
    assert status["daemon"]["registered"] is True
    assert status["daemon"]["effective_interval_ms"] == 700
    assert status["counters"]["challenges_answered"] == 1
    assert daemon.terminate() == 0
    exit_pdu = host.recv("exit")
    assert exit_pdu["invocation_id"] == init["invocation_id"]
    assert exit_pdu["reason"] == "SIGTERM"
    assert not os.path.exists(daemon.socket)


def test_failing_check_makes_response_unhealthy(host, start, tmp_path):
    flag = tmp_path / "broken"
    daemon = start(host.path)
    _script(daemon.checks, "disk", f'if [ -e {flag} ]; then echo "disk full"; exit 1; fi')
    host.register()
    host.challenge_until(lambda r: r["health"] == "healthy")
    flag.write_text("x")
    resp = host.challenge_until(lambda r: r["health"] == "unhealthy")
    assert resp["reason"] == "check disk: exit 1: disk full"
    flag.unlink()
    host.challenge_until(lambda r: r["health"] == "healthy")
    assert daemon.terminate() == 0


def test_app_report_makes_response_unhealthy(host, start):
    daemon = start(host.path)
    host.register()
    host.challenge()
    end = time.monotonic() + 5
    while not os.path.exists(daemon.socket) and time.monotonic() < end:
        time.sleep(0.02)
    with HealthClient(daemon.socket) as app:
        app.register("db", timeout_ms=5000)
        app.report(False, "replication broken")
        resp = host.challenge()
        assert resp["health"] == "unhealthy"
        assert resp["reason"] == "app db: replication broken"
        app.report(True)
        assert host.challenge()["health"] == "healthy"
    # closed without unregistering: unhealthy by default
    resp = host.challenge_until(lambda r: r["health"] == "unhealthy")
    assert "disconnected" in resp["reason"]
    assert daemon.terminate() == 0


def test_waits_for_port_then_recovers_after_unplug(host, start, tmp_path):
    link = tmp_path / "port"
    daemon = start(str(link))
    daemon.wait_log("waiting for port")
    link.symlink_to(host.path)
    init = host.register()
    host.challenge()
    # Hot-unplug: the master closes, the slave reads EIO; the daemon waits again.
    host.close()
    daemon.wait_log("went away")
    second = FakeHost()
    try:
        link.unlink()
        link.symlink_to(second.path)
        again = second.recv("init")
        assert again["invocation_id"] == init["invocation_id"]
        assert daemon.log().count("host connected") == 2
        assert daemon.terminate() == 0
        assert second.recv("exit")["reason"] == "SIGTERM"
    finally:
        second.close()


def test_bad_frames_are_nacked_and_survived(host, start):
    daemon = start(host.path)
    host.register()
    os.write(host.master, b"\ngarbage\n" + b"x" * 5000 + b"\n")
    nack = host.recv("nack")
    assert nack.app == HEARTBEAT
    assert host.challenge()["health"] == "healthy"
    assert daemon.terminate() == 0


def test_serial_transport(host, start):
    pytest.importorskip("serial")
    daemon = start(host.path, "--transport", "serial", "--serial-baudrate", "9600")
    host.register()
    assert host.challenge()["health"] == "healthy"
    assert daemon.terminate() == 0
    host.recv("exit")


def test_bad_config_exits_2(host, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "guest_ha.guest.daemon", "--config", "/dev/null",
         "--interval-ms", "abc"],
        capture_output=True, text=True, timeout=10,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "guest-ha-guestd: error: command line: interval_ms: must be an integer between "
        "100 and 60000 (got 'abc')"
    ]


def test_pyz_runs(host, start, tmp_path):
    pyz = tmp_path / "guestd.pyz"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "build_guestd_pyz.py"), str(pyz)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    daemon = start(host.path, cmd=[sys.executable, "-I", str(pyz)])
    host.register()
    assert host.challenge()["health"] == "healthy"
    assert daemon.terminate() == 0
    assert host.recv("exit")["reason"] == "SIGTERM"
