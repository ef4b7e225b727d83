"""A real libvirt live migration of a guest-ha VM between two hosts.

Two libvirtd instances on this machine, each in its own network namespace and
mount namespace with private libvirt run, state, cache, log and config folders
(``LibvirtPair``), each with its own compute agent (standalone mode, inside that
host's mount namespace) reporting over a private RabbitMQ node to one real
controller. The TCG guest boots the baked test image (our real guest daemon);
its disks are under /var/tmp, which both hosts see. The guest is live-migrated
from the source to the destination over a direct link between the namespaces.

Shown: no fault on either agent or at the controller, and heartbeating resumes
on the destination within two heartbeat intervals of the switch-over (the
destination's ``resume``/``migrated`` lifecycle event), measured on the
agents' own event timestamps."""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from typing import Any, Dict, List

import libvirt
import pytest

from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.sim.testguest import domain_xml
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.libvirt_pair import LibvirtPair, LifecycleRecorder
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.e2e

INTERVAL_MS = 500
BOOT_TIMEOUT = 120


def start_agent(workdir: str, wrapper: List[str], host: str, rabbit_url: str) -> EngineProcess:
    return EngineProcess(
        workdir,
        heartbeat={"restart_timeout_s": 120.0},
        extra={
            "libvirt": {"enabled": True},
            "controller": {
                "enabled": True,
                "transport_url": rabbit_url,
                "messaging_config": None,
                "host": host,
                "spool_dir": os.path.join(workdir, "spool"),
            },
        },
        wrapper=wrapper,
    ).start()


def mine(engine: EngineProcess, uuid: str) -> List[Dict[str, Any]]:
    return [e for e in engine.events() if e.get("instance_uuid") == uuid]


def responses(engine: EngineProcess, uuid: str) -> int:
    for vm in engine.status()["vms"]:
        if vm["instance_uuid"] == uuid:
            return int(vm["responses_ok"])
    return 0


def test_live_migration_no_false_fault_and_heartbeats_resume(guest_image, e2e_dir) -> None:
    with RabbitMQNode() as rabbit, LibvirtPair(os.path.join(e2e_dir, "hosts")) as pair:
        src, dst = pair.open(pair.source), pair.open(pair.dest)
        src_events, dst_events = LifecycleRecorder(src), LifecycleRecorder(dst)
        with ControllerProcess(e2e_dir, rabbit.url, host="ctl-1") as ctl:
            agents = {
                "src": start_agent(
                    os.path.join(e2e_dir, "agent-src"), pair.source.wrapper, "host-a", rabbit.url
                ),
                "dst": start_agent(
                    os.path.join(e2e_dir, "agent-dst"), pair.dest.wrapper, "host-b", rabbit.url
                ),
            }
            try:
                name = f"{pair.prefix}-vm"
                uuid = str(uuidlib.uuid4())
                kwargs = guest_image.domain_kwargs(e2e_dir, "vm", INTERVAL_MS)
                dom = src.defineXML(domain_xml(name, uuid, optin=True, **kwargs))
                dom.create()
                agents["src"].wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
                before = responses(agents["src"], uuid)
                wait_until(lambda: responses(agents["src"], uuid) >= before + 3, 30)

                started = time.monotonic()
                pair.migrate(dom, dst)
                took = time.monotonic() - started
                moved = dst.lookupByUUIDString(uuid)
                assert moved.isActive()
                with pytest.raises(libvirt.libvirtError):
                    src.lookupByUUIDString(uuid)

                # The switch-over: the destination's QEMU runs the guest.
                switched = wait_until(
                    lambda: dst_events.first(
                        uuid,
                        libvirt.VIR_DOMAIN_EVENT_RESUMED,
                        libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED,
                    ),
                    30,
                )
                src_stopped = wait_until(
                    lambda: src_events.first(
                        uuid,
                        libvirt.VIR_DOMAIN_EVENT_STOPPED,
                        libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED,
                    ),
                    30,
                )
                # Heartbeating resumes on the destination: the same guest daemon
                # (same invocation) registers with the destination's agent, then answers.
                first = mine(agents["src"], uuid)[0]
                resumed = agents["dst"].wait_event("registered", uuid, timeout=30)
                assert resumed["detail"]["invocation_id"] == first["detail"]["invocation_id"]
                delay = resumed["monotonic"] - switched
                print(
                    f"migration call {took:.2f} s; source stopped {src_stopped - switched:+.3f} s "
                    f"after the destination resumed; heartbeating resumed {delay:.3f} s after "
                    f"(interval {INTERVAL_MS} ms)"
                )
                assert delay <= 2 * INTERVAL_MS / 1000, (delay, dst_events.events)
                wait_until(lambda: responses(agents["dst"], uuid) >= 3, 30)

                time.sleep(4 * INTERVAL_MS / 1000)  # anything late would show up now
                # No false fault: not on either agent, not at the controller.
                assert agents["src"].faults() == [] and agents["dst"].faults() == []
                assert [e["kind"] for e in mine(agents["src"], uuid)] == ["registered", "suspended"]
                assert mine(agents["src"], uuid)[1]["detail"]["reason"] == "migrated"
                assert [e["kind"] for e in mine(agents["dst"], uuid)] == ["registered"]
                # The sequence libvirt emitted (what docs/operations.md describes).
                lv = libvirt
                assert [(e, d) for _, u, e, d in src_events.events if u == uuid][-2:] == [
                    (lv.VIR_DOMAIN_EVENT_SUSPENDED, lv.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED),
                    (lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_MIGRATED),
                ]
                dst_seq = [(e, d) for _, u, e, d in dst_events.events if u == uuid]
                assert dst_seq[0] == (
                    lv.VIR_DOMAIN_EVENT_STARTED,
                    lv.VIR_DOMAIN_EVENT_STARTED_MIGRATED,
                )
                assert (
                    lv.VIR_DOMAIN_EVENT_RESUMED,
                    lv.VIR_DOMAIN_EVENT_RESUMED_MIGRATED,
                ) in dst_seq
                status = ctl.status()
                assert status["faults_by_kind"] == {} and status["recent_faults"] == []
                assert status["computes"]["host-b"]["events"] >= 1
            finally:
                for engine in agents.values():
                    engine.stop()
