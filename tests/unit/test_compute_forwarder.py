from __future__ import annotations

import threading
import time
from typing import Any, Dict, List

import pytest

from guest_ha.compute.forwarder import ForwardingSink
from guest_ha.compute.sinks import VmEvent
from guest_ha.compute.spool import Spool
from guest_ha_dev.sim.harness import wait_until

pytestmark = pytest.mark.unit


def vm_event(kind: str, uuid: str = "u1") -> VmEvent:
    return VmEvent(kind, uuid, "dom", 1.0, time.time(), kind != "recovered", {})


class Controller:
    """Acknowledges like the controller does, and can be made unreachable."""

    def __init__(self) -> None:
        self.up = False
        self.received: List[Dict[str, Any]] = []
        self.lock = threading.Lock()

    def send(self, events: List[Dict[str, Any]]) -> Dict[str, Any]:
        with self.lock:
            if not self.up:
                raise ConnectionError("broker down")
            self.received.extend(events)
            return {"accepted": True, "keys": [e["idempotency_key"] for e in events]}


def wait_for(predicate, timeout: float = 10.0) -> None:
    wait_until(predicate, timeout, interval=0.01)


def test_events_wait_in_the_spool_until_acknowledged(tmp_path) -> None:
    controller = Controller()
    spool = Spool(str(tmp_path))
    sink = ForwardingSink(
        spool, controller.send, "compute-1", backoff_initial_s=0.01, backoff_max_s=0.05
    )
    try:
        for kind in ("heartbeat_lost", "recovered", "unhealthy"):
            sink.emit(vm_event(kind))
        time.sleep(0.2)
        assert spool.depth == 3 and controller.received == []
        controller.up = True
        wait_for(lambda: spool.depth == 0)
    finally:
        sink.close()
    assert [e["kind"] for e in controller.received] == ["heartbeat_lost", "recovered", "unhealthy"]
    assert all(e["compute_host"] == "compute-1" for e in controller.received)
    assert len({e["idempotency_key"] for e in controller.received}) == 3


def test_spool_is_replayed_after_an_agent_restart(tmp_path) -> None:
    down = Controller()
    first = ForwardingSink(Spool(str(tmp_path)), down.send, "c1", backoff_initial_s=0.01)
    first.emit(vm_event("heartbeat_lost"))
    first.close()  # the agent stops before any acknowledgement: the event is spooled
    controller = Controller()
    controller.up = True
    second = ForwardingSink(Spool(str(tmp_path)), controller.send, "c1")
    try:
        wait_for(lambda: len(controller.received) == 1)
    finally:
        second.close()
    assert controller.received[0]["kind"] == "heartbeat_lost"


def test_wrong_acknowledgement_is_not_trusted(tmp_path) -> None:
    spool = Spool(str(tmp_path))
    calls = []

    def bad_send(events: List[Dict[str, Any]]) -> Dict[str, Any]:
        calls.append(events)
        return {"accepted": True, "keys": ["someone-else"]}

    sink = ForwardingSink(spool, bad_send, "c1", backoff_initial_s=0.01, backoff_max_s=0.02)
    try:
        sink.emit(vm_event("heartbeat_lost"))
        wait_for(lambda: len(calls) >= 3)
        assert spool.depth == 1
    finally:
        sink.close()


def test_emit_does_no_disk_io_and_batches_are_acknowledged_per_key(tmp_path) -> None:
    controller = Controller()
    controller.up = True
    batches: List[int] = []
    original = controller.send

    def counting(events: List[Dict[str, Any]]) -> Dict[str, Any]:
        batches.append(len(events))
        return original(events)

    spool = Spool(str(tmp_path))
    sink = ForwardingSink(spool, counting, "c1")
    try:
        for i in range(50):
            sink.emit(vm_event("unhealthy" if i % 2 else "recovered", uuid=f"u{i % 5}"))
        wait_for(lambda: len(controller.received) == 50)
        wait_for(lambda: spool.depth == 0)
    finally:
        sink.close()
    assert sum(batches) == 50 and len(batches) < 50  # sent in batches
    assert [e["kind"] for e in controller.received] == [
        "unhealthy" if i % 2 else "recovered" for i in range(50)
    ]


def test_events_are_spooled_while_a_send_hangs(tmp_path) -> None:
    """A slow or unreachable controller must not keep events out of the spool."""
    release = threading.Event()

    def hanging(events: List[Dict[str, Any]]) -> Dict[str, Any]:
        release.wait(10)
        raise ConnectionError("timed out")

    spool = Spool(str(tmp_path))
    sink = ForwardingSink(spool, hanging, "c1", backoff_initial_s=0.01)
    try:
        sink.emit(vm_event("heartbeat_lost"))
        time.sleep(0.2)  # the sender is now stuck in its first call
        for _ in range(5):
            sink.emit(vm_event("unhealthy"))
        wait_for(lambda: spool.depth == 6)
    finally:
        release.set()
        sink.close()
