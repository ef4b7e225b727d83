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

import configparser
import os
import signal
import time
from typing import Any, Iterator, Tuple

import pytest
from nova_support import BOOT_TIMEOUT, NovaWorld

from guest_ha_dev.sim.harness import wait_until
from guest_ha_dev.sim.testguest import qemu_pid
from guest_ha_dev.testing.ansible_play import run_role
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.procs import _http
from guest_ha_dev.testing.telemetry import Telemetry
from guest_ha_dev.testing.venv_cache import ensure_venv
from guest_ha_dev.testing.vitrage_path import VitragePath
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
    world: NovaWorld, vnfm: VnfmStandIn, uuid: str, alarm_id: str, check_alarm: bool = False
) -> Tuple[int, Any]:
    """SIGSTOP the server's QEMU until its alarm's webhook arrives; then thaw
    it and wait until the server is ACTIVE again.  Returns (mark, webhook).
    ``check_alarm``: also see our alarm on the instance in Vitrage meanwhile."""
    cloud, agent = world.cloud, world.agent
    mark, events = vnfm.mark(), len(agent.events())
    pid = qemu_pid(cloud.instance_name(uuid))
    os.kill(pid, signal.SIGSTOP)
    try:
        agent.wait_event("heartbeat_lost", uuid, timeout=30, after=events)
        hook = vnfm.wait_webhook(alarm_id, after=mark, timeout=60)
        assert cloud.server(uuid)["status"] == "ERROR"
        if check_alarm:
            assert guest_ha_alarms(world, uuid), cloud.vitrage_get("/v1/alarm/?all_tenants=true")
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


@pytest.fixture(scope="module")
def path_a(vnf) -> Iterator[VitragePath]:
    """Path A: Vitrage (api, graph, persistor, notifier with the ``nova``
    notifier, our datasource reading active faults from the controller, our
    template) on the session's cloud, and the controller's reporters switched
    from ``nova`` to ``vitrage``: the session controller is stopped meanwhile
    and started again afterwards."""
    world = vnf[0]
    cloud = world.cloud
    creds = {"clouds_yaml": world.clouds_yaml, "cloud": "guest-ha", "interface": "public"}
    controller = ControllerProcess(
        os.path.join(world.workdir, "ctl-vitrage"),
        cloud.rabbit_url or "",
        host="ctl-vitrage",
        reporters=["log", "vitrage"],
        extra={"reporter_vitrage": creds},
    )
    ds_conf = {"guest_ha": {"controller_url": controller.url}}
    with VitragePath(cloud, conf_extra=ds_conf) as vitrage:
        world.controller.stop()
        try:
            controller.start()
            yield vitrage
        finally:
            controller.stop()
            world.controller.start()


def guest_ha_alarms(world: NovaWorld, uuid: str) -> list:
    """Active guest-ha alarms Vitrage has on the instance ``uuid``."""
    alarms = world.cloud.vitrage_get("/v1/alarm/?all_tenants=true")
    return [
        a
        for a in alarms
        if a.get("vitrage_type") == "guest_ha"
        and a.get("instance_id") == uuid
        and a.get("vitrage_resource_type") == "nova.instance"
    ]


def test_path_a_fault_reaches_the_vnfm_through_vitrage(vnf, path_a) -> None:
    world, vnfm, first, second = vnf
    alarms = {uuid: vnfm.create_alarm(uuid) for uuid in (first, second)}
    mark, hook = freeze_until_webhook(world, vnfm, first, alarms[first], check_alarm=True)
    assert hook.traits["instance_id"] == first and hook.traits["state"] == "error"
    assert hook.traits["tenant_id"] == vnfm.project_id
    # Thawed: our datasource deleted the alarm, Vitrage undid mark_down and its
    # nova notifier reset the server to active (freeze_until_webhook waited).
    wait_until(lambda: guest_ha_alarms(world, first) == [], 60)
    time.sleep(QUIET_S)
    assert vnfm.received(alarms[second], mark) == []
    vnfm.rearm(alarms[first])
    assert vnfm.alarm_state(alarms[first]) == "ok"


@pytest.mark.parametrize("forget_graph", [False, True], ids=["restart", "restart-empty-store"])
def test_vitrage_graph_restart_keeps_the_alarm_and_recovery_clears_it(
    vnf, path_a, forget_graph: bool
) -> None:
    """vitrage-graph restarts while a guest is frozen: the alarm is on the
    instance again afterwards (``restart-empty-store``: Vitrage's stored graph
    and events deleted too, so only our datasource's ``get_all``, reading the
    controller, can bring it back), and the thaw's recovery clears it and the
    nova notifier sets the server active."""
    world, _, first, _ = vnf
    cloud, agent = world.cloud, world.agent
    events = len(agent.events())
    pid = qemu_pid(cloud.instance_name(first))
    os.kill(pid, signal.SIGSTOP)
    try:
        agent.wait_event("heartbeat_lost", first, timeout=30, after=events)
        wait_until(lambda: guest_ha_alarms(world, first) != [], 60)
        wait_until(lambda: cloud.server(first)["status"] == "ERROR", 60)
        path_a.restart_graph(forget_graph=forget_graph)
        wait_until(lambda: guest_ha_alarms(world, first) != [], 60)
        assert cloud.server(first)["status"] == "ERROR"
    finally:
        os.kill(pid, signal.SIGCONT)
    agent.wait_event("recovered", first, timeout=60, after=events)
    wait_until(lambda: guest_ha_alarms(world, first) == [], 60)
    wait_until(lambda: cloud.server(first)["status"] == "ACTIVE", 60)


def our_templates(cloud: Any) -> list:
    return [
        t for t in cloud.vitrage_get("/v1/template/") if t.get("name") == "guest_ha_instance_fault"
    ]


def test_ansible_vitrage_entry_point_on_the_test_clouds_vitrage(vnf, path_a, tmp_path) -> None:
    """The controller role's ``vitrage`` entry point on the path A cloud's
    vitrage.conf with guest-ha's settings taken out: it writes back the
    settings the running Vitrage uses, and through the running Vitrage API it
    adds the template again after it was deleted (ACTIVE); a second run
    changes nothing.  Runs last: path A's template is replaced meanwhile."""
    cloud = vnf[0].cloud
    live = configparser.ConfigParser(interpolation=None)
    live.read(cloud.state_dir / "vitrage" / "vitrage.conf")
    types = [t for t in live["datasources"]["types"].split(",") if t != "guest_ha"]
    paths = [
        p for p in live["datasources"]["path"].split(",") if p != "guest_ha.vitrage_datasource"
    ]
    before = configparser.ConfigParser(interpolation=None)
    before.read_dict(live)
    before["datasources"]["types"] = ",".join(types)
    before["datasources"]["path"] = ",".join(paths)
    before["DEFAULT"].pop("notifiers")
    before.remove_section("guest_ha")
    root = tmp_path / "root"
    conf = root / "etc" / "vitrage" / "vitrage.conf"
    conf.parent.mkdir(parents=True)
    with open(conf, "w") as fh:
        before.write(fh)
    (tmp_path / "site").mkdir()

    for template in our_templates(cloud):
        status, _, body = _http(
            "DELETE",
            f"{cloud.vitrage_url}/v1/template?uuid={template['uuid']}",
            headers=cloud.vitrage_headers(),
        )
        assert status == 200, body
    wait_until(lambda: our_templates(cloud) == [], 60)

    extra = {
        "guest_ha_controller_root": str(root),
        "guest_ha_controller_vitrage_python": str(ensure_venv("vitrage") / "bin" / "python"),
        "guest_ha_controller_vitrage_site_packages": str(tmp_path / "site"),
        "guest_ha_controller_vitrage_types": types,
        "guest_ha_controller_vitrage_paths": paths,
        "guest_ha_controller_vitrage_values_dir": live["entity_graph"]["datasources_values_dir"],
        "guest_ha_controller_vitrage_controller_url": live["guest_ha"]["controller_url"],
        "guest_ha_controller_vitrage_api_url": cloud.vitrage_url,
        "guest_ha_controller_vitrage_token": cloud.token(),
    }
    assert run_role("controller", "vitrage", extra, tmp_path)["changed"] > 0
    wait_until(lambda: [t["status"] for t in our_templates(cloud)] == ["ACTIVE"], 60)
    assert run_role("controller", "vitrage", extra, tmp_path)["changed"] == 0

    after = configparser.ConfigParser(interpolation=None)
    after.read(conf)
    for section, option in (
        ("datasources", "types"),
        ("datasources", "path"),
        ("DEFAULT", "notifiers"),
        ("guest_ha", "controller_url"),
        ("entity_graph", "datasources_values_dir"),
    ):
        assert after[section][option] == live[section][option], (section, option)
