"""Recovery without OpenStack on the real libvirtd: the compute agent acts on a
faulty TCG guest (running our real guest daemon) when the operator allows it.

Each test boots its own guest and agent. Faults are real: QEMU frozen with
SIGSTOP (a hang the guest cannot report) or the guest's own check failing
(the control disk of the test image)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Dict, List

import pytest

from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.sim.testguest import GUEST_HA_NS, domain_xml, qemu_pid, set_control, virsh

pytestmark = pytest.mark.e2e

INTERVAL_MS = 300
BOOT_TIMEOUT = 90
RECOVERY_KINDS = ("recovery_started", "recovery_done", "recovery_gave_up")


def start_agent(workdir: str, recovery: Dict[str, Any]) -> EngineProcess:
    return EngineProcess(
        workdir,
        heartbeat={"restart_timeout_s": 60.0},
        extra={"libvirt": {"enabled": True}, "recovery": recovery},
    ).start()


def boot(domains, guest_image, e2e_dir: str, tag: str = "vm", cmdline: str = "") -> Any:
    return domains.define(
        domain_xml,
        optin=True,
        **guest_image.domain_kwargs(e2e_dir, tag, INTERVAL_MS, extra_cmdline=cmdline),
    )


def recovery_events(engine: EngineProcess, uuid: str) -> List[Dict[str, Any]]:
    return [
        e for e in engine.events() if e["kind"] in RECOVERY_KINDS and e["instance_uuid"] == uuid
    ]


def freeze(dom: Any) -> int:
    pid = qemu_pid(dom.name())
    os.kill(pid, signal.SIGSTOP)
    return pid


def thaw(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass  # the recovery destroyed that QEMU


def test_frozen_guest_is_recovered_then_the_window_limit_gives_up(
    domains, guest_image, e2e_dir
) -> None:
    dom = boot(domains, guest_image, e2e_dir)
    uuid = dom.UUIDString()
    policy = {
        "enabled": True,
        "actions": ["reset", "destroy-and-start"],
        "action_timeout_s": 3.0,
        "max_actions": 1,
    }
    engine = start_agent(os.path.join(e2e_dir, "agent"), policy)
    try:
        first = engine.wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
        time.sleep(1.0)
        pid = freeze(dom)
        try:
            lost = engine.wait_event("heartbeat_lost", uuid, timeout=10)
            started = engine.wait_event("recovery_started", uuid, timeout=10)
            done = engine.wait_event("recovery_done", uuid, timeout=BOOT_TIMEOUT)
        finally:
            thaw(pid)
        assert started["detail"]["action"] == "reset"
        assert started["detail"]["fault"] == "heartbeat_lost"
        assert started["detail"]["attempt"] == 1 and started["detail"]["max_actions"] == 1
        assert done["detail"]["outcome"] == "registered"
        again = engine.wait_event("registered", uuid, timeout=BOOT_TIMEOUT, after=1)
        assert again["detail"]["invocation_id"] != first["detail"]["invocation_id"]
        recovered = engine.wait_event("recovered", uuid, timeout=30)
        assert recovered["detail"]["previous_fault"] == "heartbeat_lost"
        assert recovered["monotonic"] - lost["monotonic"] < BOOT_TIMEOUT
        # The hypervisor could not reset a stopped QEMU: the agent said so and
        # power-cycled it, which it did not report as a crash of its own.
        kinds = [e["kind"] for e in engine.faults(uuid)]
        assert kinds == ["heartbeat_lost"], kinds
        assert dom.isActive()

        # A second hang inside the window (max_actions 1): the agent gives up.
        mark = len(engine.events())
        pid = freeze(dom)
        try:
            engine.wait_event("heartbeat_lost", uuid, timeout=10, after=mark)
            gave_up = engine.wait_event("recovery_gave_up", uuid, timeout=10, after=mark)
            time.sleep(2.0)
        finally:
            thaw(pid)
        assert "max_actions 1" in gave_up["detail"]["why_gave_up"]
        assert [e["kind"] for e in recovery_events(engine, uuid)][-1] == "recovery_gave_up"
        assert qemu_pid(dom.name()) == pid  # not touched
        status = next(v for v in engine.status()["vms"] if v["instance_uuid"] == uuid)
        assert status["recovery"]["state"] in ("gave_up", "idle")
    finally:
        engine.stop()


def test_guest_hint_stop_is_honoured_only_when_allowed(domains, guest_image, e2e_dir) -> None:
    dom = boot(domains, guest_image, e2e_dir, cmdline="guest_ha.corrective_action=stop")
    uuid = dom.UUIDString()
    ctl = os.path.join(e2e_dir, "vm.ctl")
    # The host allows reset only; the guest asks for stop.
    policy = {"enabled": True, "actions": ["reset"], "honour_hint": True}
    engine = start_agent(os.path.join(e2e_dir, "agent"), policy)
    try:
        registered = engine.wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
        assert registered["detail"]["corrective_action"] == "stop"
        set_control(ctl, unhealthy=True)
        engine.wait_event("unhealthy", uuid, timeout=30)
        started = engine.wait_event("recovery_started", uuid, timeout=10)
        assert started["detail"]["action"] == "reset"
        assert "not allowed" in started["detail"]["reason"]
        engine.wait_event("recovery_done", uuid, timeout=BOOT_TIMEOUT)
        set_control(ctl, unhealthy=False)
        engine.wait_event("recovered", uuid, timeout=60)
        assert dom.isActive()

        # This domain's own metadata now allows stop as well.
        mark = len(engine.events())
        dom.setMetadata(
            2,  # VIR_DOMAIN_METADATA_ELEMENT
            "<config><heartbeat enabled='true'/>"
            "<recovery enabled='true' actions='reset,stop' honour_hint='true'/></config>",
            "guest_ha",
            GUEST_HA_NS,
            3,  # VIR_DOMAIN_AFFECT_LIVE | VIR_DOMAIN_AFFECT_CONFIG
        )
        time.sleep(2.0)  # the agent re-reads the domain on the metadata event
        set_control(ctl, unhealthy=True)
        engine.wait_event("unhealthy", uuid, timeout=30, after=mark)
        started = engine.wait_event("recovery_started", uuid, timeout=10, after=mark)
        assert started["detail"]["action"] == "stop"
        done = engine.wait_event("recovery_done", uuid, timeout=30, after=mark)
        assert done["detail"]["outcome"] == "stopped"
        wait_until(lambda: not dom.isActive(), 10)
        assert [e["kind"] for e in engine.faults(uuid)] == ["unhealthy", "unhealthy"]
    finally:
        engine.stop()


def test_no_action_during_reboot_or_shutdown(domains, guest_image, e2e_dir) -> None:
    dom = boot(domains, guest_image, e2e_dir)
    uuid = dom.UUIDString()
    ctl = os.path.join(e2e_dir, "vm.ctl")
    # A fault, then the operator reboots within the delay: no action.
    policy = {"enabled": True, "actions": ["reset"], "delay_s": 4.0}
    engine = start_agent(os.path.join(e2e_dir, "agent"), policy)
    try:
        engine.wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
        set_control(ctl, unhealthy=True)
        engine.wait_event("unhealthy", uuid, timeout=30)
        mark = len(engine.events())
        virsh("reboot", dom.name())
        set_control(ctl, unhealthy=False)  # it comes back healthy
        engine.wait_event("registered", uuid, timeout=BOOT_TIMEOUT, after=mark)
        time.sleep(5.0)  # past the delay
        assert recovery_events(engine, uuid) == []
        # The same during a shutdown.
        set_control(ctl, unhealthy=True)
        mark = len(engine.events())
        engine.wait_event("unhealthy", uuid, timeout=30, after=mark)
        virsh("shutdown", dom.name())
        wait_until(lambda: not dom.isActive(), BOOT_TIMEOUT)
        time.sleep(5.0)
        assert recovery_events(engine, uuid) == []
        assert not dom.isActive()
    finally:
        engine.stop()


def test_no_action_with_the_policy_off(domains, guest_image, e2e_dir) -> None:
    dom = boot(domains, guest_image, e2e_dir)
    uuid = dom.UUIDString()
    engine = start_agent(os.path.join(e2e_dir, "agent"), {})
    try:
        engine.wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
        pid = freeze(dom)
        try:
            engine.wait_event("heartbeat_lost", uuid, timeout=10)
            time.sleep(3.0)
            assert recovery_events(engine, uuid) == []
            assert qemu_pid(dom.name()) == pid
        finally:
            thaw(pid)
        engine.wait_event("recovered", uuid, timeout=30)
        status = next(v for v in engine.status()["vms"] if v["instance_uuid"] == uuid)
        assert status["recovery"] is None
    finally:
        engine.stop()
