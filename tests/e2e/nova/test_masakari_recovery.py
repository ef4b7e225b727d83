"""Automatic recovery with Masakari on real services: a Nova-booted TCG guest
whose guest daemon hangs -> compute agent (nova mode) ``heartbeat_lost`` ->
controller's ``masakari`` reporter (``VM`` notification) -> masakari-api ->
masakari-engine stops and starts the server through Nova -> the guest boots,
registers again, and the controller reports ``recovered``.  A second hang of
the same server is recovered too.

The hang: the test image's control check freezes its own guest daemon
(``hang_guest_daemon``, a control disk hot-plugged into the running domain),
so the guest's QEMU still answers and Nova's stop works as for a hung
application (a clean ACPI shutdown).  A SIGSTOPped QEMU would not do: Nova's
clean shutdown call to libvirt would wait on QEMU's monitor forever.

Real: Keystone, Nova (api, conductor, scheduler, compute on libvirt TCG),
placement, glance, RabbitMQ, masakari-api and masakari-engine 22, our agent
and controller.  Stand-in: Neutron (``NovaCloud``'s, see ``nova_cloud.py``).
The session's controller (reporter ``nova``) is stopped for this module and a
controller with the ``masakari`` reporter takes its place, then it is back."""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from nova_support import BOOT_TIMEOUT, NovaWorld

from guest_ha_dev.sim.harness import wait_until
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.masakari import Masakari, hang_guest_daemon

pytestmark = [pytest.mark.e2e, pytest.mark.openstack]

#: Masakari's defaults, but: a 60 s cap on Nova's stop and start, so a failure
#: shows within the test's time; and no duplicate window (default 180 s: a
#: second hang soon after a recovery has the same payload and would be refused
#: with 409, see docs/masakari.md).  A retried delivery of one fault has the
#: same generated_time, so it is still a duplicate.
ENGINE_CONF = {
    "DEFAULT": {
        "wait_period_after_power_off": 60,
        "wait_period_after_power_on": 60,
        "duplicate_notification_detection_interval": 0,
    }
}


@pytest.fixture(scope="module")
def recovery(
    nova_world: NovaWorld,
) -> Iterator[Tuple[NovaWorld, Masakari, ControllerProcess, str]]:
    cloud = nova_world.cloud
    workdir = os.path.join(nova_world.workdir, "masakari")
    os.makedirs(workdir, exist_ok=True)
    with Masakari(cloud, engine_conf=ENGINE_CONF) as masakari:
        creds = {"clouds_yaml": nova_world.clouds_yaml, "cloud": "guest-ha", "interface": "public"}
        nova_world.controller.stop()
        controller = ControllerProcess(
            workdir,
            cloud.rabbit_url or "",
            host="ctl-masakari",
            reporters=["log", "masakari"],
            extra={"reporter_masakari": creds},
        ).start()
        uuid = ""
        try:
            uuid = cloud.boot("gha-masakari-1", nova_world.flavors["ha"], nova_world.image)
            cloud.wait_status(uuid, "ACTIVE", BOOT_TIMEOUT)
            status, payload = cloud.api(
                "POST", f"/servers/{uuid}/metadata", {"metadata": {"HA_Enabled": "True"}}
            )
            assert status == 200, payload
            nova_world.agent.wait_event("registered", uuid, timeout=BOOT_TIMEOUT)
            yield nova_world, masakari, controller, uuid
        finally:
            if uuid:
                cloud.delete(uuid)
            controller.stop()
            nova_world.controller.start()


def instance_actions(world: NovaWorld, uuid: str) -> List[str]:
    status, payload = world.cloud.api("GET", f"/servers/{uuid}/os-instance-actions")
    assert status == 200, payload
    return [a["action"] for a in payload["instanceActions"]]


def finished_notifications(masakari: Masakari, uuid: str) -> List[Dict[str, Any]]:
    return [
        dict(n)
        for n in masakari.notifications()
        if n["payload"].get("instance_uuid") == uuid and n["status"] == "finished"
    ]


def recovered_reports(controller: ControllerProcess, uuid: str) -> int:
    """How often the controller's ``log`` reporter reported the VM ``recovered``."""
    return len(re.findall(rf"\[instance {uuid}\] recovered on ", controller.log_text()))


def test_hung_guest_is_recovered_by_masakari_and_again(recovery) -> None:
    world, masakari, controller, uuid = recovery
    cloud, agent = world.cloud, world.agent
    for hang in (1, 2):
        mark = len(agent.events())
        booted = [
            e for e in agent.events() if e["kind"] == "registered" and e["instance_uuid"] == uuid
        ]
        domain = cloud.instance_name(uuid)
        hang_guest_daemon(domain, os.path.join(world.workdir, "masakari", f"hang-{hang}.ctl"))
        lost = agent.wait_event("heartbeat_lost", uuid, timeout=60, after=mark)
        # masakari-engine: stop, then start, through Nova.
        done = wait_until(
            lambda n=hang: len(finished_notifications(masakari, uuid)) >= n or None,
            2 * BOOT_TIMEOUT,
        )
        assert done
        again = agent.wait_event("registered", uuid, timeout=BOOT_TIMEOUT, after=mark)
        assert again["detail"]["invocation_id"] != booted[-1]["detail"]["invocation_id"]
        assert lost["detail"]
        agent.wait_event("recovered", uuid, timeout=60, after=mark)
        wait_until(
            lambda n=hang: recovered_reports(controller, uuid) >= n,
            30,
        )
        assert cloud.server(uuid)["status"] == "ACTIVE"
        actions = instance_actions(world, uuid)
        assert actions.count("stop") == hang and actions.count("start") == hang, actions
    # Each hang was its own notification (not a duplicate of the first).
    notes = [n for n in masakari.notifications() if n["payload"].get("instance_uuid") == uuid]
    assert len(notes) == 2 and {n["status"] for n in notes} == {"finished"}, notes
