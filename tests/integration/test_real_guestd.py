"""The real guest daemon process and the real compute engine process, with the
simulator standing in for QEMU: each VM's host socket is relayed to a
pseudo-terminal that the guest daemon opens as its port, through the same
character-device code path it uses on /dev/virtio-ports/org.opnfv.ha.0."""

from __future__ import annotations

import os
import signal
import time
from typing import Iterator, List

import pytest

from guest_ha.guest.client import HealthClient
from guest_ha_dev.sim import SimVmInfo, VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, start_guest_daemon, wait_until

pytestmark = pytest.mark.integration

INTERVAL_MS = 200
INTERVAL_S = INTERVAL_MS / 1000


class GuestDaemon:
    def __init__(self, vm: SimVmInfo, workdir: str, interval_ms: int = INTERVAL_MS) -> None:
        self.vm = vm
        self.dir = os.path.join(workdir, vm.uuid[:8])
        self.checks = os.path.join(self.dir, "checks.d")
        self.app_socket = os.path.join(self.dir, "app.sock")
        os.makedirs(self.checks)
        self.log_path = os.path.join(self.dir, "guestd.log")
        self.proc = start_guest_daemon(
            str(vm.guest_port),
            name=vm.name,
            interval_ms=interval_ms,
            app_socket=self.app_socket,
            checks_dir=self.checks,
            log_path=self.log_path,
            extra_args=["--check-interval-ms", "100", "--log-level", "debug"],
        )

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def daemons(short_tmp: str) -> Iterator[List[GuestDaemon]]:
    started: List[GuestDaemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def start_vms(sim: VmSimulator, short_tmp: str, daemons: List[GuestDaemon], count: int):
    vms = [sim.add_vm("pty", name=f"guestd-{i}") for i in range(count)]
    for vm in vms:
        daemons.append(GuestDaemon(vm, short_tmp))
    return vms


def test_real_daemon_registers_and_heartbeats(sim, short_tmp, daemons) -> None:
    (vm,) = start_vms(sim, short_tmp, daemons, 1)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        registered = engine.wait_event("registered", vm.uuid, timeout=15)
        assert registered["detail"]["name"] == vm.name
        assert registered["detail"]["interval_ms"] == INTERVAL_MS
        wait_until(lambda: engine.status()["vms"][0]["responses_ok"] >= 10, 10)
        with HealthClient(daemons[0].app_socket) as client:
            status = client.status()
        assert status["daemon"]["registered"] is True
        assert engine.faults() == []


def test_sigstop_gives_heartbeat_lost_within_two_intervals_and_sigcont_recovers(
    sim, short_tmp, daemons
) -> None:
    vms = start_vms(sim, short_tmp, daemons, 2)
    with EngineProcess(os.path.join(short_tmp, "engine"), vms) as engine:
        for vm in vms:
            engine.wait_event("registered", vm.uuid, timeout=15)
        time.sleep(5 * INTERVAL_S)
        victim = daemons[0]
        stopped_at = time.monotonic()
        os.kill(victim.proc.pid, signal.SIGSTOP)
        lost = engine.wait_event("heartbeat_lost", victim.vm.uuid, timeout=10)
        # Engine-side bound: the fault fired at most 2 intervals after the last good answer.
        assert lost["detail"]["last_response_age_s"] <= 2 * INTERVAL_S + 0.05
        assert lost["monotonic"] >= stopped_at
        os.kill(victim.proc.pid, signal.SIGCONT)
        recovered = engine.wait_event("recovered", victim.vm.uuid, timeout=10)
        assert recovered["detail"]["previous_fault"] == "heartbeat_lost"
        assert [f["instance_uuid"] for f in engine.faults()] == [victim.vm.uuid]


def test_failing_health_script_gives_unhealthy_then_recovered(sim, short_tmp, daemons) -> None:
    (vm,) = start_vms(sim, short_tmp, daemons, 1)
    daemon = daemons[0]
    verdict = os.path.join(daemon.dir, "verdict")
    with open(verdict, "w") as fh:
        fh.write("0")
    script = os.path.join(daemon.checks, "10-app")
    with open(script, "w") as fh:
        fh.write(f'#!/bin/sh\ncode=$(cat {verdict})\necho "app check says $code"\nexit $code\n')
    os.chmod(script, 0o755)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        engine.wait_event("registered", vm.uuid, timeout=15)
        time.sleep(3 * INTERVAL_S)
        assert engine.faults() == []
        with open(verdict, "w") as fh:
            fh.write("3")
        fault = engine.wait_event("unhealthy", vm.uuid, timeout=10)
        assert "10-app" in fault["detail"]["reason"]
        with open(verdict, "w") as fh:
            fh.write("0")
        engine.wait_event("recovered", vm.uuid, timeout=10)


def test_app_reporting_unhealthy_gives_unhealthy(sim, short_tmp, daemons) -> None:
    (vm,) = start_vms(sim, short_tmp, daemons, 1)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        engine.wait_event("registered", vm.uuid, timeout=15)
        wait_until(lambda: os.path.exists(daemons[0].app_socket), 10)
        with HealthClient(daemons[0].app_socket) as client:
            client.register("billing", timeout_ms=5000)
            client.report(True)
            time.sleep(3 * INTERVAL_S)
            assert engine.faults() == []
            client.report(False, "ledger out of sync")
            fault = engine.wait_event("unhealthy", vm.uuid, timeout=10)
            assert "ledger out of sync" in fault["detail"]["reason"]
            client.report(True)
            engine.wait_event("recovered", vm.uuid, timeout=10)
            client.unregister()


def test_sigterm_sends_exit_and_no_fault(sim, short_tmp, daemons) -> None:
    (vm,) = start_vms(sim, short_tmp, daemons, 1)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        engine.wait_event("registered", vm.uuid, timeout=15)
        daemons[0].proc.terminate()
        assert daemons[0].proc.wait(10) == 0
        engine.wait_event("exit", vm.uuid, timeout=10)
        time.sleep(4 * INTERVAL_S)
        assert engine.faults() == []
        assert engine.status()["vms"][0]["heartbeat_state"] == "exited"


def test_engine_restart_reregisters_real_guests_without_false_fault(
    sim, short_tmp, daemons
) -> None:
    vms = start_vms(sim, short_tmp, daemons, 3)
    workdir = os.path.join(short_tmp, "engine")
    first = EngineProcess(workdir, vms).start()
    for vm in vms:
        first.wait_event("registered", vm.uuid, timeout=15)
    first.stop()
    time.sleep(0.5)
    # Counted before the start: the new engine may register guests before
    # start() returns (it shares the first one's event log).
    mark = len(first.events())
    second = EngineProcess(workdir, vms).start()
    try:
        for vm in vms:
            second.wait_event("registered", vm.uuid, timeout=15, after=mark)
        time.sleep(5 * INTERVAL_S)
        assert second.faults() == []
        assert all(v["registered"] for v in second.status()["vms"])
    finally:
        second.stop()
    for daemon in daemons:
        assert daemon.proc.poll() is None, daemon.log()
