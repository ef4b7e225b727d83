"""The real compute engine process against simulated VMs (QEMU's socket role
played by guest_ha_dev.sim, guests by the protocol core's guest machine)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until

pytestmark = pytest.mark.integration


def test_registration_and_steady_heartbeating(sim: VmSimulator, short_tmp: str) -> None:
    vms = [sim.add_vm(interval_ms=100) for _ in range(5)]
    with EngineProcess(os.path.join(short_tmp, "engine"), vms) as engine:
        for vm in vms:
            event = engine.wait_event("registered", vm.uuid)
            assert event["detail"]["interval_ms"] == 100
            assert event["domain"] == vm.name
        wait_until(lambda: all(s["challenges_answered"] >= 10 for s in sim.stats().values()), 10)
        status = engine.status()
        assert {v["instance_uuid"] for v in status["vms"]} == {vm.uuid for vm in vms}
        assert all(v["registered"] and v["health"] == "healthy" for v in status["vms"])
        assert engine.faults() == []


def test_interval_is_clamped_to_policy(sim: VmSimulator, short_tmp: str) -> None:
    fast = sim.add_vm(interval_ms=10)
    slow = sim.add_vm(interval_ms=10**6)
    with EngineProcess(os.path.join(short_tmp, "engine"), [fast, slow]) as engine:
        assert engine.wait_event("registered", fast.uuid)["detail"]["interval_ms"] == 100
        assert engine.wait_event("registered", slow.uuid)["detail"]["interval_ms"] == 60000
        wait_until(lambda: sim.stats(fast.uuid)[fast.uuid]["effective_interval_ms"] == 100, 5)


def test_frozen_guest_is_lost_within_two_intervals_and_recovers(
    sim: VmSimulator, short_tmp: str
) -> None:
    interval = 0.2
    vms = [sim.add_vm(interval_ms=int(interval * 1000)) for _ in range(3)]
    victim = vms[0]
    with EngineProcess(os.path.join(short_tmp, "engine"), vms) as engine:
        for vm in vms:
            engine.wait_event("registered", vm.uuid)
        time.sleep(3 * interval)
        frozen_at = sim.freeze(victim.uuid)
        lost = engine.wait_event("heartbeat_lost", victim.uuid, timeout=5)
        assert lost["fault"] is True
        # The engine's own clock says when the last good answer came: the fault rule
        # (answer before the next challenge, threshold 1) bounds detection by 2 intervals.
        assert lost["detail"]["last_response_age_s"] <= 2 * interval + 0.05
        assert lost["monotonic"] > frozen_at
        sim.thaw(victim.uuid)
        recovered = engine.wait_event("recovered", victim.uuid, timeout=5)
        assert recovered["detail"]["previous_fault"] == "heartbeat_lost"
        assert [f["instance_uuid"] for f in engine.faults()] == [victim.uuid]


def test_unhealthy_then_recovered(sim: VmSimulator, short_tmp: str) -> None:
    vm = sim.add_vm(interval_ms=100)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        engine.wait_event("registered", vm.uuid)
        sim.set_health(vm.uuid, False, "database replica lagging")
        fault = engine.wait_event("unhealthy", vm.uuid)
        assert fault["fault"] and fault["detail"]["reason"] == "database replica lagging"
        sim.set_health(vm.uuid, True)
        assert engine.wait_event("recovered", vm.uuid)["detail"]["previous_fault"] == "unhealthy"
        assert len(engine.faults()) == 1


def test_graceful_exit_is_not_a_fault(sim: VmSimulator, short_tmp: str) -> None:
    vm = sim.add_vm(interval_ms=100)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        engine.wait_event("registered", vm.uuid)
        sim.guest_exit(vm.uuid)
        engine.wait_event("exit", vm.uuid)
        time.sleep(0.5)
        assert engine.faults() == []
        state = engine.status()["vms"][0]
        assert state["heartbeat_state"] == "exited"
        sent = state["challenges_sent"]
        time.sleep(0.4)
        assert engine.status()["vms"][0]["challenges_sent"] == sent  # no more challenges
        sim.guest_restart(vm.uuid)
        event = engine.wait_event("registered", vm.uuid, after=1)
        assert event["detail"]["invocation_id"] != event["detail"]["previous_invocation_id"]


def test_restarted_engine_reregisters_every_guest_without_false_fault(
    sim: VmSimulator, short_tmp: str
) -> None:
    vms = [sim.add_vm(interval_ms=100) for _ in range(20)]
    workdir = os.path.join(short_tmp, "engine")
    first = EngineProcess(workdir, vms).start()
    for vm in vms:
        first.wait_event("registered", vm.uuid)
    first.stop(signal.SIGKILL)  # no goodbye: the guests only notice challenges stop
    time.sleep(0.3)
    # Counted before the start: the new engine may register guests before
    # start() returns (it shares the first one's event log).
    start = len(first.events())
    second = EngineProcess(workdir, vms).start()
    try:
        for vm in vms:
            second.wait_event("registered", vm.uuid, timeout=10, after=start)
        time.sleep(1.0)
        assert second.faults() == []
        assert all(v["registered"] for v in second.status()["vms"])
    finally:
        second.stop()


def test_guest_without_daemon_faults_after_restart_timeout(
    sim: VmSimulator, short_tmp: str
) -> None:
    silent = sim.add_vm(guest="none")
    with EngineProcess(
        os.path.join(short_tmp, "engine"), [silent], heartbeat={"restart_timeout_s": 1.0}
    ) as engine:
        fault = engine.wait_event("restart_timeout", silent.uuid, timeout=5)
        assert fault["fault"] is True
        time.sleep(1.2)
        assert len(engine.faults()) == 1  # reported once, not repeatedly


def test_vm_socket_appears_late_and_vm_dies(sim: VmSimulator, short_tmp: str) -> None:
    vm = sim.add_vm(interval_ms=100)
    sim.kill(vm.uuid)  # socket gone before the engine starts
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        time.sleep(0.3)
        assert engine.status()["vms"][0]["channel"] == "disconnected"
        revived = sim.add_vm(interval_ms=100, uuid=vm.uuid, name=vm.name)
        engine.wait_event("registered", revived.uuid, timeout=10)
        sim.kill(vm.uuid)
        engine.wait_event("suspended", vm.uuid)
        assert engine.faults() == []


def test_socket_directory_discovery(sim: VmSimulator, short_tmp: str) -> None:
    first = sim.add_vm(interval_ms=100)
    with EngineProcess(os.path.join(short_tmp, "engine"), socket_dir=sim.workdir) as engine:
        engine.wait_event("registered", first.uuid)
        second = sim.add_vm(interval_ms=100)
        engine.wait_event("registered", second.uuid, timeout=10)
        assert len(engine.status()["vms"]) == 2


@pytest.mark.parametrize("kind", ["garbage", "malformed", "oversized", "flood", "spoof_broadcast"])
def test_hostile_guest_is_contained(sim: VmSimulator, short_tmp: str, kind: str) -> None:
    good = [sim.add_vm(interval_ms=200) for _ in range(5)]
    bad = sim.add_vm(interval_ms=200)
    with EngineProcess(os.path.join(short_tmp, "engine"), [*good, bad]) as engine:
        for vm in [*good, bad]:
            engine.wait_event("registered", vm.uuid)
        sim.set_hostile(bad.uuid, kind)
        time.sleep(2.0)
        status = {v["instance_uuid"]: v for v in engine.status()["vms"]}
        counters = status[bad.uuid]["counters"]
        assert counters["bad_frames"] + counters["rate_limited"] > 0, counters
        assert counters["nacks_sent"] <= 5 * 2.0 + 10 + 1  # nacks are rate limited
        assert sim.stats(bad.uuid)[bad.uuid]["hostile_bytes"] > 0
        assert [f for f in engine.faults() if f["instance_uuid"] != bad.uuid] == []
        assert engine.proc is not None and engine.proc.poll() is None
        assert "rejected" in engine.log_text() or kind == "flood"


def test_flooding_and_garbage_vms_cause_no_false_fault_on_50_vms(
    sim: VmSimulator, short_tmp: str
) -> None:
    good = [sim.add_vm(interval_ms=100) for _ in range(50)]
    flooder = sim.add_vm(interval_ms=100)
    garbage = sim.add_vm(interval_ms=100)
    with EngineProcess(os.path.join(short_tmp, "engine"), [*good, flooder, garbage]) as engine:
        for vm in [*good, flooder, garbage]:
            engine.wait_event("registered", vm.uuid, timeout=15)
        before = {u: s["challenges_answered"] for u, s in sim.stats().items()}
        sim.set_hostile(flooder.uuid, "flood")
        sim.set_hostile(garbage.uuid, "garbage")
        time.sleep(5.0)
        after = sim.stats()
        assert [
            f for f in engine.faults() if f["instance_uuid"] not in {flooder.uuid, garbage.uuid}
        ] == []
        # Every good VM kept being challenged and answering through the flood.
        for vm in good:
            assert after[vm.uuid]["challenges_answered"] - before[vm.uuid] >= 30
        status = {v["instance_uuid"]: v for v in engine.status()["vms"]}
        assert status[garbage.uuid]["counters"]["bad_frames"] > 0
        assert status[flooder.uuid]["counters"]["rate_limited"] > 0


def test_server_group_request_is_nacked_until_routing_exists(
    sim: VmSimulator, short_tmp: str
) -> None:
    from guest_ha.protocol import GUEST_TO_HOST, SERVER_GROUP, make

    vm = sim.add_vm(interval_ms=100)
    with EngineProcess(os.path.join(short_tmp, "engine"), [vm]) as engine:
        engine.wait_event("registered", vm.uuid)
        sim.send_message(vm.uuid, make(SERVER_GROUP, "status_query", GUEST_TO_HOST, seq=1))
        wait_until(
            lambda: any(
                m["msg_type"] == "nack" and m["log_msg"].startswith("not_enabled:")
                for m in sim.stats(vm.uuid)[vm.uuid]["server_group_received"]
            ),
            5,
        )
        assert engine.faults() == []
