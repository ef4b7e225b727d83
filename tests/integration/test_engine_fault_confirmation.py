"""Fault confirmation: a missed heartbeat is reported only once the hypervisor
confirms the domain still runs, so a pause racing its own libvirt event is no
fault. The engine runs in-process here, with the confirmer libvirt mode would
install replaced by one the test controls, against simulated VMs."""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List

import pytest

from guest_ha.compute.config import parse_config
from guest_ha.compute.engine import HeartbeatEngine
from guest_ha.compute.sinks import VmEvent
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import wait_until

pytestmark = pytest.mark.integration


class Collect:
    def __init__(self) -> None:
        self.events: List[VmEvent] = []

    def emit(self, event: VmEvent) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass

    def kinds(self, uuid: str) -> List[str]:
        return [e.kind for e in self.events if e.instance_uuid == uuid]


def run_engine(vms, confirm: Callable[[str, Callable[[bool, str], None]], None]) -> Any:
    config = parse_config(
        {
            "vms": [{"uuid": v.uuid, "name": v.name, "socket": v.socket_path} for v in vms],
            "status_socket": None,
            "events": {"log": False},
        }
    )
    sink = Collect()
    engine = HeartbeatEngine(config, sink)
    engine.fault_confirmer = confirm
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    return engine, sink, thread


@pytest.mark.parametrize("running", [True, False])
def test_missed_heartbeat_waits_for_the_hypervisor(sim: VmSimulator, running: bool) -> None:
    vm = sim.add_vm(interval_ms=100)
    asked: Dict[str, Any] = {}

    def confirm(uuid: str, answer: Callable[[bool, str], None]) -> None:
        asked[uuid] = answer  # answered later, from another thread, like libvirt's

    engine, sink, thread = run_engine([vm], confirm)
    try:
        wait_until(lambda: "registered" in sink.kinds(vm.uuid), 10)
        sim.freeze(vm.uuid)
        wait_until(lambda: vm.uuid in asked, 5)
        sim.thaw(vm.uuid)  # recovery happens while the fault is still held
        wait_until(lambda: engine.vms[vm.uuid].channel.heartbeat_view.health == "healthy", 5)
        assert sink.kinds(vm.uuid) == ["registered"]  # nothing reported yet
        asked[vm.uuid](running, "running" if running else "paused")
        if running:
            wait_until(lambda: sink.kinds(vm.uuid)[1:] == ["heartbeat_lost", "recovered"], 5)
        else:
            wait_until(lambda: engine.vms[vm.uuid].lifecycle_suspended == "paused", 5)
            assert sink.kinds(vm.uuid) == ["registered"]
    finally:
        engine.stop()
        thread.join(5)


def test_unanswered_confirmation_reports_the_fault_anyway(sim: VmSimulator) -> None:
    vm = sim.add_vm(interval_ms=100)
    engine, sink, thread = run_engine([vm], lambda uuid, answer: None)
    try:
        wait_until(lambda: "registered" in sink.kinds(vm.uuid), 10)
        sim.freeze(vm.uuid)
        wait_until(lambda: "heartbeat_lost" in sink.kinds(vm.uuid), 5)
    finally:
        engine.stop()
        thread.join(5)
