"""The Doctor chain to a VNF manager, path B (no Vitrage), on real services:
a Nova-booted TCG guest frozen with SIGSTOP of its QEMU -> compute agent (nova
mode) ``heartbeat_lost`` -> controller's ``nova`` reporter (``os-resetState``)
-> Nova's legacy ``compute.instance.update`` -> ceilometer-agent-notification
-> aodh-listener -> aodh-notifier -> webhook.

Real: Keystone, Nova (api, conductor, scheduler, compute on libvirt TCG),
placement, glance, RabbitMQ, Ceilometer 27, Aodh 23, our agent and controller.
Stand-ins: Neutron (``NovaCloud``'s, see ``nova_cloud.py``) and the VNF
manager (``guest_ha_dev.testing.vnfm.VnfmStandIn``: it boots its servers in
its own project, creates the Aodh event alarms with its own token, receives
the webhooks).  One Nova cloud per session is shared with the other ``nova``
tests; the telemetry services start once per session."""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Iterator, Tuple

import pytest
from nova_support import BOOT_TIMEOUT, NovaWorld

from guest_ha_dev.sim.harness import wait_until
from guest_ha_dev.sim.testguest import qemu_pid
from guest_ha_dev.testing.telemetry import Telemetry
from guest_ha_dev.testing.vnfm import VnfmStandIn

pytestmark = [pytest.mark.e2e, pytest.mark.openstack]

#: How long a webhook that must not come is waited for, after the one that must.
QUIET_S = 5.0


@pytest.fixture(scope="module")
def vnf(
    nova_world: NovaWorld, telemetry: Telemetry
) -> Iterator[Tuple[NovaWorld, VnfmStandIn, str, str]]:
    """Two opted-in servers of the VNFM's project, both heartbeating."""
    cloud = nova_world.cloud
    with VnfmStandIn(cloud, telemetry) as vnfm:
        servers = []
        try:
            # One at a time: fewer concurrent writers of Nova's SQLite cell DB.
            for i in (1, 2):
                uuid = vnfm.boot(f"gha-vnf-{i}", nova_world.flavors["ha"], nova_world.image)
                servers.append(uuid)
                cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
                nova_world.agent.wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
            yield nova_world, vnfm, servers[0], servers[1]
        finally:
            for uuid in servers:
                cloud.delete(uuid)


def freeze_until_webhook(
    world: NovaWorld, vnfm: VnfmStandIn, uuid: str, alarm_id: str
) -> Tuple[int, Any]:
    """SIGSTOP the server's QEMU until its alarm's webhook arrives; then thaw
    it and wait until the server is ACTIVE again.  Returns (mark, webhook)."""
    cloud, agent = world.cloud, world.agent
    mark, events = vnfm.mark(), len(agent.events())
    pid = qemu_pid(cloud.instance_name(uuid))
    os.kill(pid, signal.SIGSTOP)
    try:
        agent.wait_event("heartbeat_lost", uuid, timeout=30, after=events)
        hook = vnfm.wait_webhook(alarm_id, after=mark, timeout=60)
        assert cloud.server(uuid)["status"] == "ERROR"
    finally:
        os.kill(pid, signal.SIGCONT)
    agent.wait_event("recovered", uuid, timeout=60, after=events)
    wait_until(lambda: cloud.server(uuid)["status"] == "ACTIVE", 60)
    return mark, hook


def test_path_b_fault_reaches_the_vnfm_and_rearms(vnf) -> None:
    world, vnfm, first, second = vnf
    alarm_1 = vnfm.create_alarm(first)
    alarm_2 = vnfm.create_alarm(second)
    # An alarm of another project (admin's) on the same server never fires:
    # the VNFM must create it in the server's project.
    foreign = vnfm.create_alarm(first, token=world.cloud.token(), path="/foreign")

    mark, hook = freeze_until_webhook(world, vnfm, first, alarm_1)
    assert hook.path == "/failure"
    assert hook.body["current"] == "alarm"
    assert hook.traits["instance_id"] == first
    assert hook.traits["state"] == "error"
    assert hook.traits["tenant_id"] == vnfm.project_id
    time.sleep(QUIET_S)
    assert vnfm.received(alarm_2, mark) == []
    assert vnfm.received(foreign, mark) == []
    assert [w.alarm_id for w in vnfm.webhooks[mark:]] == [alarm_1]

    # The VNFM re-arms; the next fault of the same server fires again.
    vnfm.rearm(alarm_1)
    assert vnfm.alarm_state(alarm_1) == "ok"
    mark, hook = freeze_until_webhook(world, vnfm, first, alarm_1)
    assert hook.traits["instance_id"] == first and hook.body["previous"] == "ok"
    vnfm.rearm(alarm_1)


def test_fault_on_one_server_never_fires_another_servers_alarm(vnf) -> None:
    world, vnfm, first, second = vnf
    alarms = {uuid: vnfm.create_alarm(uuid) for uuid in (first, second)}
    mark, hook = freeze_until_webhook(world, vnfm, second, alarms[second])
    assert hook.traits["instance_id"] == second
    time.sleep(QUIET_S)
    assert vnfm.received(alarms[first], mark) == []
    # Every webhook since the freeze is of an alarm that watches this server
    # (the earlier test's alarm on it fires too).
    assert {vnfm.alarms[w.alarm_id] for w in vnfm.webhooks[mark:]} == {second}
    # The recovery (reset to active) emitted an update too: it matched nothing.
    assert vnfm.alarm_state(alarms[first]) == "insufficient data"
