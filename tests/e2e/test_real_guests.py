"""The compute agent on the real libvirtd, heartbeating real TCG guests booted
from the image baked with our guest role, running our real guest daemon.

Each test boots its own guest (about 5-10 s under TCG) and its own agent."""

from __future__ import annotations

import os
import signal
import time

import pytest

from guest_ha.compute.domain_xml import find_channel
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.sim.testguest import domain_xml, qemu_pid, set_control, virsh

pytestmark = pytest.mark.e2e

INTERVAL_MS = 300
INTERVAL_S = INTERVAL_MS / 1000
BOOT_TIMEOUT = 90


def start_agent(workdir: str, restart_timeout_s: float = 120.0) -> EngineProcess:
    return EngineProcess(
        workdir,
        heartbeat={"restart_timeout_s": restart_timeout_s},
        extra={"libvirt": {"enabled": True}},
    ).start()


@pytest.fixture
def guest(domains, guest_image, e2e_dir):
    """A running opted-in guest (channel hot-attached by the agent) and its agent."""
    dom = domains.define(
        domain_xml, optin=True, **guest_image.domain_kwargs(e2e_dir, "vm", INTERVAL_MS)
    )
    engine = start_agent(os.path.join(e2e_dir, "agent"))
    try:
        engine.wait_event("registered", dom.UUIDString(), timeout=BOOT_TIMEOUT)
        yield dom, engine
    finally:
        engine.stop()


def console(e2e_dir: str) -> str:
    with open(os.path.join(e2e_dir, "vm.console.log"), errors="replace") as fh:
        return fh.read()[-3000:]


def responses(engine: EngineProcess, uuid: str) -> int:
    return next(v for v in engine.status()["vms"] if v["instance_uuid"] == uuid)["responses_ok"]


def test_hot_attached_channel_carries_heartbeats(guest) -> None:
    dom, engine = guest
    channel = find_channel(dom.XMLDesc(0))
    assert channel is not None and channel.connected  # the guest daemon has the port open
    registered = engine.events()[0]
    assert registered["detail"]["name"] == "guest-ha-test"
    assert registered["detail"]["interval_ms"] == INTERVAL_MS
    before = responses(engine, dom.UUIDString())
    time.sleep(5 * INTERVAL_S)
    assert responses(engine, dom.UUIDString()) >= before + 3
    assert engine.faults() == []


def test_sigstop_of_qemu_is_lost_within_two_intervals(guest) -> None:
    dom, engine = guest
    uuid = dom.UUIDString()
    time.sleep(4 * INTERVAL_S)
    pid = qemu_pid(dom.name())
    os.kill(pid, signal.SIGSTOP)
    try:
        lost = engine.wait_event("heartbeat_lost", uuid, timeout=10)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert lost["detail"]["last_response_age_s"] <= 2 * INTERVAL_S + 0.1
    recovered = engine.wait_event("recovered", uuid, timeout=30)
    assert recovered["detail"]["previous_fault"] == "heartbeat_lost"


def test_failing_health_check_in_guest_is_unhealthy(guest, e2e_dir) -> None:
    dom, engine = guest
    uuid = dom.UUIDString()
    set_control(os.path.join(e2e_dir, "vm.ctl"), unhealthy=True)
    fault = engine.wait_event("unhealthy", uuid, timeout=30)
    assert "50-test-control" in fault["detail"]["reason"]
    set_control(os.path.join(e2e_dir, "vm.ctl"), unhealthy=False)
    engine.wait_event("recovered", uuid, timeout=30)


def test_reboot_is_not_a_fault(guest, e2e_dir) -> None:
    dom, engine = guest
    uuid = dom.UUIDString()
    mark = len(engine.events())
    first = engine.events()[0]["detail"]["invocation_id"]
    virsh("reboot", dom.name())
    again = engine.wait_event("registered", uuid, timeout=BOOT_TIMEOUT, after=mark)
    assert again["detail"]["invocation_id"] != first, console(e2e_dir)
    time.sleep(4 * INTERVAL_S)
    assert engine.faults() == [], console(e2e_dir)


def test_shutdown_then_start_is_not_a_fault(guest, e2e_dir) -> None:
    dom, engine = guest
    uuid = dom.UUIDString()
    virsh("shutdown", dom.name())
    wait_until(lambda: not dom.isActive(), BOOT_TIMEOUT)
    exited = [e for e in engine.events() if e["kind"] == "exit"]
    assert exited, "the guest daemon should deregister on the way down: " + console(e2e_dir)
    mark = len(engine.events())
    dom.create()
    engine.wait_event("registered", uuid, timeout=BOOT_TIMEOUT, after=mark)
    time.sleep(4 * INTERVAL_S)
    assert engine.faults() == [], console(e2e_dir)
    # Nova-style XML rewrites aside, the channel is in the persistent definition now.
    assert find_channel(dom.XMLDesc(2)) is not None


def test_suspend_then_resume_is_not_a_fault(guest) -> None:
    dom, engine = guest
    uuid = dom.UUIDString()
    dom.suspend()
    time.sleep(6 * INTERVAL_S)
    dom.resume()
    before = responses(engine, uuid)
    wait_until(lambda: responses(engine, uuid) >= before + 3, 20)
    assert engine.faults() == []


def test_pause_during_a_slow_check_is_not_unhealthy(guest, e2e_dir) -> None:
    """The VM is paused for 2 s (``virsh suspend``, as during a host stall or a
    migration's downtime) while its 1.5 s check runs under a 2 s limit, eight
    times at different points of the check: never a false ``unhealthy``. Before
    the daemon confirmed timeouts with a re-run, 1 or 2 of 5 such pauses gave one."""
    dom, engine = guest
    uuid = dom.UUIDString()
    ctl = os.path.join(e2e_dir, "vm.ctl")
    set_control(ctl, unhealthy=False, slow=True)
    time.sleep(3.0)  # the slow check now runs almost all the time
    mark = len(engine.events())
    for i in range(8):
        time.sleep(0.2 * i)
        dom.suspend()
        time.sleep(2.0)
        dom.resume()
        before = responses(engine, uuid)
        wait_until(lambda b=before: responses(engine, uuid) >= b + 3, 20)
        time.sleep(2.0)  # the check that was in flight has finished (or timed out)
    set_control(ctl, unhealthy=False)
    faults = [(e["kind"], e["detail"].get("reason")) for e in engine.events()[mark:] if e["fault"]]
    assert faults == [], f"{faults}\n{console(e2e_dir)}"
    print(console(e2e_dir)[-1500:])


def test_host_stall_during_a_slow_check_is_not_unhealthy(guest, e2e_dir) -> None:
    """QEMU stopped for 1.5 s (SIGSTOP, as in a host stall) while the guest's 1.5 s
    check runs under a 2 s limit, five times: the guest's clock jumps across each
    stall and the daemon does not charge the jump to the check. The agent rightly
    sees ``heartbeat_lost`` and then ``recovered``; never ``unhealthy``."""
    dom, engine = guest
    uuid = dom.UUIDString()
    ctl = os.path.join(e2e_dir, "vm.ctl")
    set_control(ctl, unhealthy=False, slow=True)
    time.sleep(3.0)  # the slow check now runs almost all the time
    mark = len(engine.events())
    pid = qemu_pid(dom.name())
    for i in range(5):
        time.sleep(0.3 * i)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        before = responses(engine, uuid)
        wait_until(lambda b=before: responses(engine, uuid) >= b + 3, 20)
        time.sleep(2.0)  # the check that was in flight has finished (or timed out)
    set_control(ctl, unhealthy=False)
    events = engine.events()[mark:]
    unhealthy = [e["detail"].get("reason") for e in events if e["kind"] == "unhealthy"]
    assert unhealthy == [], f"{unhealthy}\n{console(e2e_dir)}"
    assert any(e["kind"] == "heartbeat_lost" for e in events)
    with open(os.path.join(e2e_dir, "vm.console.log"), errors="replace") as fh:
        assert "clock jumped" in fh.read(), console(e2e_dir)


def test_destroy_is_reported_as_a_crash(guest) -> None:
    dom, engine = guest
    dom.destroy()
    crash = engine.wait_event("vm_crashed", dom.UUIDString(), timeout=15)
    assert crash["fault"] is True and crash["detail"]["cause"] == "destroyed"
    assert [f["kind"] for f in engine.faults()] == ["vm_crashed"]


def test_agent_restart_gives_no_false_fault(guest, e2e_dir) -> None:
    dom, engine = guest
    uuid = dom.UUIDString()
    engine.stop()
    time.sleep(1.0)
    second = start_agent(os.path.join(e2e_dir, "agent2"))
    try:
        second.wait_event("registered", uuid, timeout=30)
        before = responses(second, uuid)
        time.sleep(6 * INTERVAL_S)
        assert responses(second, uuid) >= before + 3
        assert second.faults() == []
    finally:
        second.stop()


def test_qemu_crash_is_reported_as_a_crash(guest) -> None:
    """QEMU dying under the guest (SIGKILL): libvirt reports a failed stop."""
    dom, engine = guest
    os.kill(qemu_pid(dom.name()), signal.SIGKILL)
    crash = engine.wait_event("vm_crashed", dom.UUIDString(), timeout=15)
    assert crash["fault"] is True
    assert crash["detail"]["cause"] in ("failed", "crashed")
    assert [f["kind"] for f in engine.faults()] == ["vm_crashed"]
