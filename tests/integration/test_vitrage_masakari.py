"""The ``vitrage`` and ``masakari`` reporters against the real services started
by ``guest_ha_dev.testing.openstack`` on loopback: Keystone 30 (tokens, catalog
with ``rca`` and ``instance-ha`` endpoints), nova-api 34 (seeded servers and
compute services), Vitrage 15.0.1 (vitrage-api, vitrage-graph,
vitrage-persistor over a private RabbitMQ node, with this project's
``guest_ha.vitrage_datasource`` loaded next to Vitrage's ``nova.instance``
datasource, which pulls the servers from our nova-api) and masakari-api 22.
Every call is authenticated by Keystone.

- a fault posted by the reporter becomes the ``guest_ha.heartbeat`` alarm on
  the real ``nova.instance`` vertex, seen through Vitrage's alarm API, and a
  recovery clears it;
- a fault becomes a stored Masakari ``VM`` notification; a duplicate (409)
  counts as delivered, an unknown host (400) is permanent;
- the whole pipeline: a compute engine process with a simulated VM, a real
  ``guest-ha-controller`` process with the reporters ``vitrage`` and
  ``masakari`` configured from a clouds.yaml, RabbitMQ in between.

Stand-ins: Neutron only (``NeutronStandIn``: the two read calls nova-api
makes when it lists or shows servers; Vitrage's nova datasource lists them).
Servers are seeded with Nova's own objects rather than booted.  No
masakari-engine runs: the test checks the notification Masakari stored, not a
recovery (that needs a hypervisor).
"""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from typing import Any, Dict, List, Optional

import pytest

pytest.importorskip("keystoneauth1")
pytest.importorskip("oslo_messaging")

from guest_ha.cloud_session import session_from_clouds_yaml
from guest_ha.controller.reporters import ReporterError
from guest_ha.controller.reporters.masakari import MasakariReporter
from guest_ha.controller.reporters.vitrage import VitrageReporter
from guest_ha.vitrage_datasource import ALARM_NAME, DATASOURCE
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.openstack import OpenStackCloud
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.integration

HOST = "compute-a"
FLAVOR = "ha.small"


@pytest.fixture(scope="module")
def rabbit():
    with RabbitMQNode() as node:
        yield node


@pytest.fixture(scope="module")
def cloud(rabbit):
    with OpenStackCloud(vitrage=True, masakari=True, rabbit_url=rabbit.url) as started:
        sys_timings = ", ".join(f"{k}={v}" for k, v in started.timings.items())
        print(f"cloud timings: {sys_timings}")
        yield started


@pytest.fixture(scope="module")
def clouds_yaml(cloud, tmp_path_factory) -> str:
    return str(cloud.clouds_yaml(tmp_path_factory.mktemp("clouds") / "clouds.yaml"))


@pytest.fixture(scope="module")
def session(clouds_yaml):
    return session_from_clouds_yaml(clouds_yaml, "guest-ha")


MASAKARI = {"service_type": "instance-ha", "interface": "public"}


@pytest.fixture(scope="module")
def segment(cloud, session) -> Dict[str, Any]:
    """Nova knows HOST (a nova-compute service); Masakari has it in a segment.
    Masakari checks the host against Nova's os-services itself."""
    cloud.seed([{"op": "host", "host": HOST}, {"op": "flavor", "name": FLAVOR, "extra_specs": {}}])
    seg = session.post(
        "/segments",
        json={"segment": {"name": "gha-seg", "recovery_method": "auto", "service_type": "COMPUTE"}},
        endpoint_filter=MASAKARI,
    ).json()["segment"]
    host = session.post(
        f"/segments/{seg['uuid']}/hosts",
        json={"host": {"name": HOST, "type": "COMPUTE", "control_attributes": "SSH"}},
        endpoint_filter=MASAKARI,
    ).json()["host"]
    return {"segment": seg, "host": host}


def new_server(cloud, name: str, server_uuid: Optional[str] = None) -> str:
    server_uuid = server_uuid or str(uuidlib.uuid4())
    cloud.create_server(server_uuid, name, FLAVOR, HOST, metadata={"HA_Enabled": "True"})
    return server_uuid


def event(kind: str, server_uuid: str, fault: bool, **detail: Any) -> Dict[str, Any]:
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    return {
        "kind": kind,
        "instance_uuid": server_uuid,
        "domain": "instance-00000001",
        "fault": fault,
        "time": stamp,
        "monotonic": time.monotonic(),
        "detail": {"reason": "test", **detail},
        "compute_host": HOST,
        "idempotency_key": uuidlib.uuid4().hex,
    }


def guest_ha_alarms(cloud, server_uuid: str) -> List[Dict[str, Any]]:
    alarms = cloud.vitrage_get("/v1/alarm/?all_tenants=true")
    return [
        a
        for a in alarms
        if a.get("vitrage_type") == DATASOURCE and a.get("instance_id") == server_uuid
    ]


def instance_vertex(cloud, server_uuid: str) -> Optional[Dict[str, Any]]:
    resources = cloud.vitrage_get("/v1/resources/?all_tenants=true&resource_type=nova.instance")
    for res in resources:
        if res.get("id") == server_uuid:
            return res
    return None


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def masakari_notifications(session, server_uuid: str) -> List[Dict[str, Any]]:
    found = session.get("/notifications", endpoint_filter=MASAKARI).json()["notifications"]
    return [n for n in found if n["payload"].get("instance_uuid") == server_uuid]


# --------------------------------------------------------------------------- vitrage


def test_fault_becomes_alarm_on_the_nova_instance_and_recovery_clears_it(
    cloud, session, segment
) -> None:
    """Seeded rows: host, flavor and server (``new_server``): this cloud has no
    nova-compute; Vitrage's ``nova.instance`` datasource only needs the server listed."""
    server = new_server(cloud, "vnf-vitrage")
    # Vitrage's own nova.instance datasource picks the server up from nova-api
    # at its next snapshot (every 10 s here).
    vertex = wait_for(lambda: instance_vertex(cloud, server), 40, "nova.instance in Vitrage")
    assert vertex["vitrage_is_placeholder"] is False
    assert vertex["name"] == "vnf-vitrage"

    reporter = VitrageReporter(session)
    reporter.report(event("heartbeat_lost", server, True, interval_ms=100))
    alarms = wait_for(lambda: guest_ha_alarms(cloud, server), 20, "guest_ha alarm")
    assert len(alarms) == 1
    alarm = alarms[0]
    assert alarm["name"] == ALARM_NAME
    assert alarm["state"] == "Active"
    assert alarm["kind"] == "heartbeat_lost"
    assert alarm["compute_host"] == HOST
    assert alarm["vitrage_operational_severity"] == "CRITICAL"
    # Attached ("on") to the instance vertex Vitrage built from nova-api.
    assert alarm["vitrage_resource_type"] == "nova.instance"
    assert alarm["vitrage_resource_id"] == vertex["vitrage_id"]

    # A redelivery (controller restarted mid-report) and a new fault kind while
    # the alarm is active keep one alarm.  (Vitrage's alarm list comes from
    # its persistor's history, which keeps the properties the alarm was raised
    # with; the graph vertex itself is refreshed.)
    reporter.report(event("heartbeat_lost", server, True))
    reporter.report(event("unhealthy", server, True, reason="db down"))
    time.sleep(1.5)
    assert len(guest_ha_alarms(cloud, server)) == 1

    # Events the reporter must ignore.
    reporter.report(event("registered", server, False))
    reporter.report(event("exit", server, False))

    reporter.report(event("recovered", server, False, previous_fault="unhealthy"))
    wait_for(lambda: not guest_ha_alarms(cloud, server), 20, "alarm cleared")
    # A repeated recovery is harmless.
    reporter.report(event("recovered", server, False))


def test_vitrage_reporter_without_credentials_is_retryable_error(cloud, clouds_yaml) -> None:
    with open(clouds_yaml) as fh:
        text = fh.read().replace(cloud.admin_password, "wrong")
    bad = os.path.join(os.path.dirname(clouds_yaml), "bad.yaml")
    with open(bad, "w") as fh:
        fh.write(text)
    reporter = VitrageReporter(session_from_clouds_yaml(bad, "guest-ha"))
    with pytest.raises(ReporterError) as info:
        reporter.report(event("heartbeat_lost", str(uuidlib.uuid4()), True))
    # Like the nova reporter: Keystone refusing is retried (credentials get
    # fixed, Keystone comes back); the fault is not dropped.
    assert info.value.retryable is True


# --------------------------------------------------------------------------- masakari


def test_fault_becomes_a_stored_masakari_vm_notification(cloud, session, segment) -> None:
    """Seeded rows: host (a ``nova-compute`` service Masakari checks) and server:
    this cloud has no nova-compute, and no masakari-engine acts on the host."""
    server = new_server(cloud, "vnf-masakari")
    reporter = MasakariReporter(session)
    reporter.report(event("heartbeat_lost", server, True))
    found = masakari_notifications(session, server)
    assert len(found) == 1
    note = found[0]
    assert note["type"] == "VM"
    assert note["source_host_uuid"] == segment["host"]["uuid"]
    assert note["payload"] == {
        "event": "QEMU_GUEST_AGENT_ERROR",
        "instance_uuid": server,
        "vir_domain_event": "STOPPED_FAILED",
    }
    # Masakari rejects the same notification within its window with 409; the
    # reporter counts that as delivered, so a redelivery is harmless.
    reporter.report(event("unhealthy", server, True))
    assert len(masakari_notifications(session, server)) == 1
    # Recovery: Masakari has no such notification; nothing is sent.
    reporter.report(event("recovered", server, False))
    assert len(masakari_notifications(session, server)) == 1


def test_masakari_unknown_host_is_permanent(cloud, session, segment) -> None:
    """Seeded rows: the segment's host (``segment`` fixture)."""
    reporter = MasakariReporter(session)
    bad = event("heartbeat_lost", str(uuidlib.uuid4()), True)
    bad["compute_host"] = "not-in-any-segment"
    with pytest.raises(ReporterError) as info:
        reporter.report(bad)
    assert info.value.retryable is False
    assert "400" in str(info.value)


# --------------------------------------------------------------------------- pipeline


def test_pipeline_compute_to_controller_to_vitrage_and_masakari(
    cloud, rabbit, clouds_yaml, session, segment, short_tmp
) -> None:
    """Compute engine (simulated VM) -> RabbitMQ -> guest-ha-controller with
    reporters vitrage and masakari -> Vitrage alarm + Masakari notification;
    recovery clears the alarm.

    Seeded rows: host and server, because the guest is a simulated VM, not a
    server Nova booted."""
    reporter_conf = {"clouds_yaml": clouds_yaml, "cloud": "guest-ha", "interface": "public"}
    with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
        vm = sim.add_vm(interval_ms=100)
        new_server(cloud, "vnf-pipeline", vm.uuid)
        with (
            ControllerProcess(
                short_tmp,
                rabbit.url,
                host="ctl-1",
                reporters=["log", "vitrage", "masakari"],
                extra={"reporter_vitrage": reporter_conf, "reporter_masakari": reporter_conf},
            ) as ctl,
            EngineProcess(
                os.path.join(short_tmp, "compute"),
                [vm],
                extra={
                    "controller": {
                        "enabled": True,
                        "transport_url": rabbit.url,
                        "messaging_config": None,
                        "spool_dir": os.path.join(short_tmp, "spool"),
                        "host": HOST,
                    }
                },
            ) as engine,
        ):
            engine.wait_event("registered", vm.uuid, timeout=15)
            sim.freeze(vm.uuid)
            engine.wait_event("heartbeat_lost", vm.uuid)
            alarms = wait_for(lambda: guest_ha_alarms(cloud, vm.uuid), 30, "pipeline alarm")
            assert alarms[0]["kind"] == "heartbeat_lost"
            assert alarms[0]["vitrage_resource_type"] == "nova.instance"
            notes = wait_for(
                lambda: masakari_notifications(session, vm.uuid), 30, "pipeline notification"
            )
            assert notes[0]["payload"]["event"] == "QEMU_GUEST_AGENT_ERROR"
            assert notes[0]["source_host_uuid"] == segment["host"]["uuid"]
            sim.thaw(vm.uuid)
            engine.wait_event("recovered", vm.uuid)
            wait_for(lambda: not guest_ha_alarms(cloud, vm.uuid), 30, "pipeline alarm cleared")
            wait_until(lambda: ctl.status()["reporters"].get("vitrage", {}).get("sent", 0) >= 2, 10)
            status = ctl.status()
            assert status["reporters"]["masakari"]["sent"] >= 1
            assert len(masakari_notifications(session, vm.uuid)) == 1
