"""The compute agent on the real libvirtd with TCG domains that sit in their
BIOS (no guest OS): discovery, opt-in, hot-attach of the channel, and the
restart_timeout fault for a domain whose guest never registers."""

from __future__ import annotations

import os
import time

import pytest

from guest_ha.compute.domain_xml import find_channel
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.sim.testguest import domain_xml, virsh

pytestmark = pytest.mark.e2e


def agent(workdir: str, restart_timeout_s: float = 60.0, **libvirt: object) -> EngineProcess:
    return EngineProcess(
        workdir,
        heartbeat={"restart_timeout_s": restart_timeout_s},
        extra={"libvirt": {"enabled": True, **libvirt}},
    )


def test_hot_attach_to_opted_in_domain_and_leave_others_alone(lv, domains, e2e_dir) -> None:
    opted = domains.define(domain_xml, optin=True)
    other = domains.define(domain_xml, optin=None)
    declined = domains.define(domain_xml, optin=False)
    other_before = other.XMLDesc(0)
    declined_before = declined.XMLDesc(0)
    assert find_channel(opted.XMLDesc(0)) is None
    # domain_names: this test's domains only (the libvirtd may run others' too)
    with agent(
        os.path.join(e2e_dir, "agent"), restart_timeout_s=3.0, domain_names=f"{domains.prefix}-*"
    ) as engine:
        wait_until(lambda: find_channel(opted.XMLDesc(0)) is not None, 20)
        channel = find_channel(opted.XMLDesc(0))
        assert channel.socket_path and os.path.exists(channel.socket_path)
        # live plus persistent: the channel survives Nova-less restarts too
        assert find_channel(opted.XMLDesc(2)) is not None  # VIR_DOMAIN_XML_INACTIVE
        wait_until(
            lambda: opted.UUIDString() in {v["instance_uuid"] for v in engine.status()["vms"]}, 10
        )
        # No guest OS answers: after restart_timeout that is a fault of its own.
        fault = engine.wait_event("restart_timeout", opted.UUIDString(), timeout=15)
        assert fault["fault"] is True
        uuids = {v["instance_uuid"] for v in engine.status()["vms"]}
        assert uuids == {opted.UUIDString()}
    assert other.XMLDesc(0) == other_before
    assert declined.XMLDesc(0) == declined_before
    assert "org.opnfv.ha.0" not in virsh("dumpxml", other.name())


def test_optin_file_and_missing_controller(lv, domains, e2e_dir) -> None:
    by_file = domains.define(domain_xml, optin=None)
    no_ctrl = domains.define(domain_xml, optin=True, controller=False)
    optin_path = os.path.join(e2e_dir, "domains.yaml")
    with open(optin_path, "w") as fh:
        fh.write(f"domains:\n  - name: {by_file.name()}\n    heartbeat: true\n")
    with agent(os.path.join(e2e_dir, "agent"), optin_file=optin_path) as engine:
        wait_until(lambda: find_channel(by_file.XMLDesc(0)) is not None, 20)
        time.sleep(1.0)
        assert find_channel(no_ctrl.XMLDesc(0)) is None
        log = engine.log_text()
        assert "no virtio-serial controller" in log and "cannot be hot-plugged" in log


def test_pause_suppresses_and_undefine_removes(lv, domains, e2e_dir) -> None:
    dom = domains.define(domain_xml, optin=True)
    with agent(os.path.join(e2e_dir, "agent"), restart_timeout_s=2.0) as engine:
        uuid = dom.UUIDString()
        wait_until(lambda: uuid in {v["instance_uuid"] for v in engine.status()["vms"]}, 20)
        dom.suspend()
        wait_until(
            lambda: any(
                v["lifecycle"] for v in engine.status()["vms"] if v["instance_uuid"] == uuid
            ),
            10,
        )
        time.sleep(3.0)  # longer than restart_timeout: a paused VM is never a fault
        assert engine.faults(uuid) == []
        dom.destroy()
        fault = engine.wait_event("vm_crashed", uuid, timeout=10)
        assert fault["detail"]["cause"] == "destroyed"
        dom.undefine()
        wait_until(lambda: uuid not in {v["instance_uuid"] for v in engine.status()["vms"]}, 10)


def test_domain_names_pattern_leaves_other_domains_alone(lv, domains, e2e_dir) -> None:
    """Two opted-in domains; the agent's ``domain_names`` matches only one. The
    other (as another Nova's or another agent's domain on a shared libvirtd)
    gets no channel and is never heartbeated."""
    mine = domains.define(domain_xml, optin=True)
    theirs = domains.define(domain_xml, optin=True)
    theirs_before = theirs.XMLDesc(0)
    with agent(os.path.join(e2e_dir, "agent"), domain_names=mine.name()) as engine:
        wait_until(lambda: find_channel(mine.XMLDesc(0)) is not None, 20)
        wait_until(
            lambda: mine.UUIDString() in {v["instance_uuid"] for v in engine.status()["vms"]}, 10
        )
        time.sleep(2.5)  # more than one rescan interval (2 s)
        assert {v["instance_uuid"] for v in engine.status()["vms"]} == {mine.UUIDString()}
    assert theirs.XMLDesc(0) == theirs_before
