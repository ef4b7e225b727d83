"""The C guest daemon (agents/guest-c) against the real compute engine process,
with the simulator standing in for QEMU (a pty per VM, as in test_real_guestd.py),
and the unchanged Python clients ``guest-ha-health`` / ``guest-ha-sg`` library
talking to its app API socket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Iterator, List

import pytest

from c_guest_support import c_guestd
from guest_ha.guest.client import HealthApiError, HealthClient
from guest_ha_dev.sim import SimVmInfo, VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, start_guest_daemon, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.c_guest]

GUEST_HA_HEALTH = os.path.join(os.path.dirname(sys.executable), "guest-ha-health")
INTERVAL_MS = 200
INTERVAL_S = INTERVAL_MS / 1000


class CDaemon:
    def __init__(self, vm: SimVmInfo, workdir: str) -> None:
        self.vm = vm
        self.dir = os.path.join(workdir, vm.uuid[:8])
        self.checks = os.path.join(self.dir, "checks.d")
        self.app_socket = os.path.join(self.dir, "app.sock")
        os.makedirs(self.checks)
        self.log_path = os.path.join(self.dir, "guestd.log")
        self.proc = start_guest_daemon(
            str(vm.guest_port),
            name=vm.name,
            interval_ms=INTERVAL_MS,
            app_socket=self.app_socket,
            checks_dir=self.checks,
            log_path=self.log_path,
            extra_args=["--check-interval-ms", "100", "--log-level", "debug"],
            command=[c_guestd()],
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
def daemons() -> Iterator[List[CDaemon]]:
    started: List[CDaemon] = []
    yield started
    for daemon in started:
        daemon.stop()


def nested_list(levels: int) -> list:
    """``[[...[]...]]``: ``levels`` arrays, one inside the other."""
    value: list = []
    for _ in range(levels - 1):
        value = [value]
    return value


def start_vms(sim: VmSimulator, short_tmp: str, daemons: List[CDaemon], count: int):
    vms = [sim.add_vm("pty", name=f"cguest-{i}") for i in range(count)]
    for vm in vms:
        daemons.append(CDaemon(vm, short_tmp))
    return vms


def test_c_daemon_registers_heartbeats_and_serves_the_python_client(
    sim, short_tmp, daemons
) -> None:
    (vm,) = start_vms(sim, short_tmp, daemons, 1)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        registered = engine.wait_event("registered", vm.uuid, timeout=15)
        assert registered["detail"]["name"] == vm.name
        assert registered["detail"]["interval_ms"] == INTERVAL_MS
        wait_until(lambda: engine.status()["vms"][0]["responses_ok"] >= 10, 10)
        with HealthClient(daemons[0].app_socket) as client:
            status = client.status()
        assert status["daemon"]["implementation"] == "c"
        assert status["daemon"]["registered"] is True
        assert status["daemon"]["effective_interval_ms"] == INTERVAL_MS
        assert status["counters"]["challenges_answered"] >= 10
        cli = subprocess.run(
            [GUEST_HA_HEALTH, "--socket", daemons[0].app_socket, "status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert cli.returncode == 0, cli.stderr
        assert "registered" in cli.stdout
        # docs/protocol.md 4.3: broadcast data is at depth 3 of the PDU, so the daemon
        # sends 30 levels of nesting and refuses 31 rather than send a malformed_json PDU
        with HealthClient(daemons[0].app_socket) as raw:
            assert raw.request("sg_broadcast", data=nested_list(30))["bytes"] == 60
            with pytest.raises(HealthApiError, match="nests 31 levels deep; at most 30"):
                raw.request("sg_broadcast", data=nested_list(31))
        assert engine.faults() == []


def test_c_daemon_sigstop_gives_heartbeat_lost_and_sigcont_recovers(
    sim, short_tmp, daemons
) -> None:
    (vm,) = start_vms(sim, short_tmp, daemons, 1)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        engine.wait_event("registered", vm.uuid, timeout=15)
        time.sleep(5 * INTERVAL_S)
        os.kill(daemons[0].proc.pid, signal.SIGSTOP)
        lost = engine.wait_event("heartbeat_lost", vm.uuid, timeout=10)
        assert lost["detail"]["last_response_age_s"] <= 2 * INTERVAL_S + 0.05
        os.kill(daemons[0].proc.pid, signal.SIGCONT)
        recovered = engine.wait_event("recovered", vm.uuid, timeout=10)
        assert recovered["detail"]["previous_fault"] == "heartbeat_lost"


def test_c_daemon_failing_check_and_app_report_give_unhealthy(sim, short_tmp, daemons) -> None:
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
        assert "check 10-app: exit 3: app check says 3" in fault["detail"]["reason"]
        with open(verdict, "w") as fh:
            fh.write("0")
        engine.wait_event("recovered", vm.uuid, timeout=10)
        with HealthClient(daemon.app_socket) as client:
            client.register("billing", timeout_ms=5000)
            client.report(False, "ledger out of sync")
            wait_until(lambda: len(engine.faults(vm.uuid)) >= 2, 10)
            assert "app billing: ledger out of sync" in engine.faults()[-1]["detail"]["reason"]
            client.report(True)
            client.unregister()


def test_c_daemon_check_timeout_is_unhealthy(sim, short_tmp, daemons) -> None:
    (vm,) = start_vms(sim, short_tmp, daemons, 1)
    script = os.path.join(daemons[0].checks, "20-hang")
    with open(script, "w") as fh:
        fh.write("#!/bin/sh\necho stuck\nexec sleep 60\n")
    os.chmod(script, 0o755)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        fault = engine.wait_event("unhealthy", vm.uuid, timeout=15)
        assert "timed out after 2000 ms: stuck" in fault["detail"]["reason"]


def test_c_daemon_sigterm_sends_exit_and_no_fault(sim, short_tmp, daemons) -> None:
    (vm,) = start_vms(sim, short_tmp, daemons, 1)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        engine.wait_event("registered", vm.uuid, timeout=15)
        daemons[0].proc.terminate()
        assert daemons[0].proc.wait(10) == 0
        engine.wait_event("exit", vm.uuid, timeout=10)
        time.sleep(4 * INTERVAL_S)
        assert engine.faults() == []
        assert engine.status()["vms"][0]["heartbeat_state"] == "exited"
    assert not os.path.exists(daemons[0].app_socket)


def test_c_daemon_engine_restart_reregisters_without_fault(sim, short_tmp, daemons) -> None:
    (vm,) = start_vms(sim, short_tmp, daemons, 1)
    workdir = os.path.join(short_tmp, "engine")
    first = EngineProcess(workdir, [vm]).start()
    first.wait_event("registered", vm.uuid, timeout=15)
    first.stop()
    time.sleep(0.5)
    mark = len(first.events())
    second = EngineProcess(workdir, [vm]).start()
    try:
        second.wait_event("registered", vm.uuid, timeout=15, after=mark)
        time.sleep(5 * INTERVAL_S)
        assert second.faults() == []
    finally:
        second.stop()
    assert daemons[0].proc.poll() is None, daemons[0].log()
    # The pty stand-in shows no hang-up: the new engine's challenge re-registers the guest.
    assert daemons[0].log().count("heartbeat state registering -> registered") >= 1


def test_c_daemon_reads_the_python_daemons_config_file(short_tmp) -> None:
    """The same [guestd] file and flags; --check-config prints the same keys."""
    conf = os.path.join(short_tmp, "guestd.conf")
    with open(conf, "w") as fh:
        fh.write("# comment\n[guestd]\nname = vnf-c\nInterval_MS: 250\ncorrective_action = Stop\n")
    args = ["--config", conf, "--check-config", "--log-level", "debug"]
    c_out = subprocess.run([c_guestd(), *args], capture_output=True, text=True, timeout=10)
    py_out = subprocess.run(
        [sys.executable, "-m", "guest_ha.guest.daemon", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert c_out.returncode == py_out.returncode == 0, c_out.stderr + py_out.stderr
    assert c_out.stdout == py_out.stdout
    assert "interval_ms = 250\n" in c_out.stdout and "corrective_action = stop\n" in c_out.stdout


@pytest.mark.parametrize(
    ("content", "flags", "message"),
    [
        ("[guestd]\ninterval_ms = 50\n", [], "interval_ms: must be between 100 and 60000"),
        ("[guestd]\nportt = /dev/x\n", [], "unknown key 'portt'"),
        ("[other]\n", [], "unknown section [other]"),
        ("", ["--interval-ms", "abc"], "command line: interval_ms: must be an integer"),
        ("", ["--transport", "usb"], "must be one of virtio, serial"),
        ("", ["--bogus", "1"], "unrecognized argument"),
    ],
)
def test_c_daemon_bad_config_exits_2_with_one_line(short_tmp, content, flags, message) -> None:
    conf = os.path.join(short_tmp, "bad.conf")
    with open(conf, "w") as fh:
        fh.write(content)
    proc = subprocess.run(
        [c_guestd(), "--config", conf, *flags], capture_output=True, text=True, timeout=10
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("guest-ha-guestd: error: ")
    assert message in proc.stderr and proc.stderr.count("\n") == 1
