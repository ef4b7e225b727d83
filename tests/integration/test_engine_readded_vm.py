"""A VM removed while its fault is active and added again (Nova's stop and
start undefine and redefine the domain, so the libvirt monitor removes and
re-adds it) reports ``recovered`` once it answers again: the fault is carried
over, not forgotten.  In-process engine, simulated VM."""

from __future__ import annotations

import threading
from typing import Any, Callable, List

import pytest

from guest_ha.compute.config import parse_config
from guest_ha.compute.engine import REMOVED_FAULTS_MAX, HeartbeatEngine
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


def test_fault_survives_remove_and_add(sim: VmSimulator) -> None:
    vm = sim.add_vm(interval_ms=100)
    config = parse_config(
        {
            "vms": [{"uuid": vm.uuid, "name": vm.name, "socket": vm.socket_path}],
            "status_socket": None,
            "events": {"log": False},
        }
    )
    sink = Collect()
    engine = HeartbeatEngine(config, sink)

    def confirm(uuid: str, answer: Callable[[bool, str], None]) -> None:
        answer(True, "running")

    engine.fault_confirmer = confirm
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: "registered" in sink.kinds(vm.uuid), 10)
        spec: Any = engine.vms[vm.uuid].spec
        sim.freeze(vm.uuid)
        wait_until(lambda: "heartbeat_lost" in sink.kinds(vm.uuid), 5)
        engine.post(lambda: engine.remove_vm(vm.uuid))
        wait_until(lambda: vm.uuid not in engine.vms, 5)
        assert engine.removed_faults[vm.uuid][0] == "heartbeat_lost"
        sim.thaw(vm.uuid)
        engine.post(lambda: engine.add_vm(spec, "libvirt"))
        wait_until(lambda: "recovered" in sink.kinds(vm.uuid), 10)
        assert vm.uuid not in engine.removed_faults
        recovered = [e for e in sink.events if e.kind == "recovered"][-1]
        assert recovered.detail["previous_fault"] == "heartbeat_lost"
        # A healthy VM removed leaves nothing behind, and the memory is bounded.
        engine.post(lambda: engine.remove_vm(vm.uuid))
        wait_until(lambda: vm.uuid not in engine.vms, 5)
        assert vm.uuid not in engine.removed_faults
        assert REMOVED_FAULTS_MAX >= 1
    finally:
        engine.stop()
        thread.join(5)
