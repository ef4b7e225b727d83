"""The compute agent in ``mode: nova`` on servers booted by real nova-compute
(``NovaCloud``: Nova 34, placement, glance, libvirt on TCG; Neutron is the
named stand-in of ``guest_ha_dev.testing.nova_cloud``).

One opted-in server is shared by the module; its lifecycle tests run in file
order and each checks that the channel is back and heartbeats resume, with no
fault.  At most two servers run at once."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Iterator, Tuple

import pytest
from nova_support import BOOT_TIMEOUT, INTERVAL_MS, NovaWorld

from guest_ha.compute.cli import format_status
from guest_ha.compute.domain_xml import find_channel, has_virtio_serial_controller
from guest_ha_dev.sim.harness import wait_until
from guest_ha_dev.sim.testguest import qemu_pid, virsh

pytestmark = [pytest.mark.e2e, pytest.mark.nova]


def responses(agent: Any, uuid: str) -> int:
    for vm in agent.status()["vms"]:
        if vm["instance_uuid"] == uuid:
            return int(vm["responses_ok"])
    return -1


def heartbeating(agent: Any, uuid: str, count: int = 3, timeout: float = 60) -> None:
    """Wait until the agent has ``count`` more answered heartbeats for ``uuid``."""
    wait_until(lambda: responses(agent, uuid) >= 0, timeout)
    before = responses(agent, uuid)
    wait_until(lambda: responses(agent, uuid) >= before + count, timeout)


def live_xml(world: NovaWorld, uuid: str) -> str:
    return virsh("dumpxml", world.cloud.instance_name(uuid))


@pytest.fixture(scope="module")
def ha_server(nova_world: NovaWorld) -> Iterator[Tuple[NovaWorld, str]]:
    """A server of the opt-in flavor, booted through the Nova API, heartbeated."""
    cloud = nova_world.cloud
    uuid = cloud.boot("gha-ha-1", nova_world.flavors["ha"], nova_world.image)
    try:
        cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
        nova_world.agent.wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
        yield nova_world, uuid
    finally:
        cloud.delete(uuid)


def test_opt_in_server_gets_channel_and_heartbeats(ha_server) -> None:
    world, uuid = ha_server
    xml = live_xml(world, uuid)
    assert '<nova:extraSpec name="guest_ha:heartbeat">true</nova:extraSpec>' in xml
    channel = find_channel(xml)
    assert channel is not None and channel.connected
    registered = world.agent.wait_event("registered", uuid)
    assert registered["detail"]["interval_ms"] == INTERVAL_MS
    assert registered["domain"] == world.cloud.instance_name(uuid)
    heartbeating(world.agent, uuid)
    assert world.agent.faults(uuid) == []
    vm = next(v for v in world.agent.status()["vms"] if v["instance_uuid"] == uuid)
    assert vm["source"] == "libvirt"


def test_server_without_the_extra_spec_is_untouched(ha_server) -> None:
    world, _ = ha_server
    cloud = world.cloud
    uuid = cloud.boot("gha-plain-1", world.flavors["plain"], world.image)
    try:
        cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
        # Long enough for the agent to have seen the domain start and decided.
        time.sleep(5)
        xml = live_xml(world, uuid)
        assert has_virtio_serial_controller(xml)  # it could have had the channel
        assert find_channel(xml) is None
        assert uuid not in [vm["instance_uuid"] for vm in world.agent.status()["vms"]]
        assert [e for e in world.agent.events() if e["instance_uuid"] == uuid] == []
    finally:
        cloud.delete(uuid)


def test_image_without_qemu_guest_agent_property_is_reported(ha_server) -> None:
    world, _ = ha_server
    cloud = world.cloud
    uuid = cloud.boot("gha-noqga-1", world.flavors["ha"], world.image_no_qga)
    try:
        cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
        event = world.agent.wait_event("channel_unavailable", uuid, timeout=30)
        assert event["fault"] is False
        assert "hw_qemu_guest_agent=yes" in event["detail"]["reason"]
        status = world.agent.status()
        assert [e["instance_uuid"] for e in status["channel_unavailable"]] == [uuid]
        assert f"NO CHANNEL {event['domain']} {uuid}" in format_status(status)
        assert "virtio-serial controller" in world.agent.log_text()
        time.sleep(3)  # later reconciliations do not repeat the event
        kinds = [e["kind"] for e in world.agent.events() if e["instance_uuid"] == uuid]
        assert kinds == ["channel_unavailable"]
    finally:
        cloud.delete(uuid)
    wait_until(lambda: world.agent.status()["channel_unavailable"] == [], 30)


def _lifecycle(world: NovaWorld, uuid: str, action: Any, restarts: bool) -> None:
    """Run one Nova operation on the shared server; the guest registers again
    (if its domain was restarted) or keeps answering; never a fault."""
    agent = world.agent
    faults = len(agent.faults(uuid))
    mark = len(agent.events())
    action()
    if restarts:
        agent.wait_event("registered", uuid, timeout=BOOT_TIMEOUT, after=mark)
    channel = find_channel(live_xml(world, uuid))
    assert channel is not None, "channel not back after the operation"
    heartbeating(agent, uuid)
    assert agent.faults(uuid)[faults:] == [], world.cloud.console_log(uuid)[-2000:]


def test_hard_reboot(ha_server) -> None:
    world, uuid = ha_server
    cloud = world.cloud

    def hard() -> None:
        cloud.action(uuid, {"reboot": {"type": "HARD"}})
        cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)

    _lifecycle(world, uuid, hard, restarts=True)


def test_soft_reboot(ha_server) -> None:
    """The test image powers off on the ACPI button, so Nova's soft reboot
    (shutdown, then start) does not fall back to a hard one after 120 s."""
    world, uuid = ha_server
    cloud = world.cloud

    def soft() -> None:
        started = time.monotonic()
        cloud.action(uuid, {"reboot": {"type": "SOFT"}})
        wait_until(lambda: cloud.server(uuid).get("OS-EXT-STS:task_state") is not None, 10)
        cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
        assert time.monotonic() - started < 60

    _lifecycle(world, uuid, soft, restarts=True)


def test_stop_start(ha_server) -> None:
    world, uuid = ha_server
    cloud = world.cloud

    def stop_start() -> None:
        cloud.action(uuid, {"os-stop": None})
        cloud.wait_status(uuid, "SHUTOFF", BOOT_TIMEOUT)
        cloud.action(uuid, {"os-start": None})
        cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)

    _lifecycle(world, uuid, stop_start, restarts=True)


def test_pause_unpause(ha_server) -> None:
    world, uuid = ha_server
    cloud = world.cloud

    def pause() -> None:
        cloud.action(uuid, {"pause": None})
        cloud.wait_status(uuid, "PAUSED", 60)
        time.sleep(3 * INTERVAL_MS / 1000)
        cloud.action(uuid, {"unpause": None})
        cloud.wait_status(uuid, "ACTIVE", 60)

    _lifecycle(world, uuid, pause, restarts=False)


def test_suspend_resume(ha_server) -> None:
    world, uuid = ha_server
    cloud = world.cloud

    def suspend() -> None:
        cloud.action(uuid, {"suspend": None})
        cloud.wait_status(uuid, "SUSPENDED", BOOT_TIMEOUT)
        cloud.action(uuid, {"resume": None})
        cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)

    _lifecycle(world, uuid, suspend, restarts=False)


def test_agent_restart_gives_no_false_fault(ha_server) -> None:
    world, uuid = ha_server
    world.agent.stop()
    world.agent = world.start_agent("agent-restarted")
    world.agent.wait_event("registered", uuid, timeout=60)
    heartbeating(world.agent, uuid)
    assert world.agent.faults() == []


def test_sigstop_sets_server_error_then_active(ha_server) -> None:
    """Frozen QEMU -> heartbeat_lost -> controller's nova reporter sets the real
    server to ERROR (os-resetState); SIGCONT -> recovered -> ACTIVE."""
    world, uuid = ha_server
    cloud, agent = world.cloud, world.agent
    mark = len(agent.events())
    pid = qemu_pid(cloud.instance_name(uuid))
    os.kill(pid, signal.SIGSTOP)
    try:
        agent.wait_event("heartbeat_lost", uuid, timeout=30, after=mark)
        wait_until(lambda: cloud.server(uuid)["status"] == "ERROR", 60)
    finally:
        os.kill(pid, signal.SIGCONT)
    agent.wait_event("recovered", uuid, timeout=60, after=mark)
    wait_until(lambda: cloud.server(uuid)["status"] == "ACTIVE", 60)
    nova_reporter = world.controller.status()["reporters"]["nova"]
    assert nova_reporter["sent"] >= 2, nova_reporter  # ERROR, then ACTIVE


def test_resize_on_the_same_host(ha_server) -> None:
    world, uuid = ha_server
    cloud = world.cloud
    bigger = cloud.flavor("gha.ha.bigger", {"guest_ha:heartbeat": "true"}, ram=640)

    def resize() -> None:
        cloud.action(uuid, {"resize": {"flavorRef": bigger}})
        cloud.wait_status(uuid, "VERIFY_RESIZE", BOOT_TIMEOUT)
        cloud.action(uuid, {"confirmResize": None})
        cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)

    _lifecycle(world, uuid, resize, restarts=True)


def test_delete_leaves_no_state(nova_world: NovaWorld) -> None:
    world = nova_world
    cloud, agent = world.cloud, world.agent
    uuid = cloud.boot("gha-del-1", world.flavors["ha"], world.image)
    cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
    agent.wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
    cloud.delete(uuid)
    wait_until(lambda: uuid not in [vm["instance_uuid"] for vm in agent.status()["vms"]], 30)
    time.sleep(2)
    assert agent.faults(uuid) == []
    assert uuid not in json.dumps(agent.status())
