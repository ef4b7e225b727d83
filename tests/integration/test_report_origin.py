"""A compute host cannot report another host's VMs (docs/operations.md,
"Multi-host high availability"): real RabbitMQ with one broker user per compute
host, a real controller process with ``[report_origin] mode = nova``, and the
real Keystone + nova-api of guest_ha_dev.testing.openstack (servers seeded with
Nova's own objects; Neutron's two read calls answered by the stand-in named
there).  Reports are counted at a notification listener: every accepted fault
arrives once, no rejected one arrives at all."""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from collections import Counter
from typing import Any, Dict, List

import pytest

pytest.importorskip("oslo_messaging")
pytest.importorskip("keystoneauth1")

from guest_ha.messaging.identity import BROKER_USER
from guest_ha.messaging.rpc import ControllerClient, get_transport
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.testing.controller import ControllerProcess, NotificationCollector
from guest_ha_dev.testing.openstack import openstack_fixture
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.integration

cloud = openstack_fixture(scope="module")
PREFIX = "guest-ha-compute-"


@pytest.fixture(scope="module")
def rabbit():
    with RabbitMQNode() as node:
        node.urls = {  # type: ignore[attr-defined]
            host: node.add_user(PREFIX + host, f"pw-{host}-{uuidlib.uuid4().hex[:8]}")
            for host in ("compute-a", "compute-b")
        }
        node.urls["controller"] = node.add_user("guest-ha-controller", "pw-ctl")  # type: ignore[attr-defined]
        yield node


@pytest.fixture(scope="module")
def servers(cloud) -> Dict[str, str]:
    cloud.create_flavor("origin.small", {"guest_ha:heartbeat": "true"})
    for host in ("compute-a", "compute-b"):
        cloud.create_host(host)
    out = {}
    for name, host in (("a1", "compute-a"), ("a2", "compute-a"), ("b1", "compute-b")):
        out[name] = str(uuidlib.uuid4())
        cloud.create_server(out[name], f"origin-{name}", "origin.small", host)
    return out


@pytest.fixture(scope="module")
def controller(rabbit, cloud, servers, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("origin"))
    clouds = cloud.clouds_yaml(os.path.join(workdir, "clouds.yaml"))
    with ControllerProcess(
        workdir,
        rabbit.urls["controller"],
        host="ctl-origin",
        reporters=["log", "notification"],
        extra={
            "report_origin": {"mode": "nova", "compute_user_prefix": PREFIX},
            "reporter_nova": {"clouds_yaml": str(clouds), "cloud": "guest-ha"},
        },
    ) as ctl:
        yield ctl


@pytest.fixture
def collector(rabbit):
    col = NotificationCollector(rabbit.urls["controller"])
    yield col
    col.stop()


def fault(uuid: str, host: str, kind: str = "heartbeat_lost") -> Dict[str, Any]:
    return {
        "idempotency_key": str(uuidlib.uuid4()),
        "instance_uuid": uuid,
        "kind": kind,
        "fault": True,
        "compute_host": host,
        "monotonic": time.monotonic(),
    }


def rejected_metric(ctl: ControllerProcess, reason: str) -> int:
    for line in ctl.metrics().splitlines():
        if line.startswith(f'guest_ha_reports_rejected_total{{reason="{reason}"}}'):
            return int(line.split()[-1])
    raise AssertionError(f"no rejected metric for {reason}")


def delivered(collector: NotificationCollector) -> Counter:
    return Counter(collector.keys())


def test_host_cannot_report_another_hosts_vm(rabbit, servers, controller, collector) -> None:
    before = {r: rejected_metric(controller, r) for r in ("not_on_host", "host_mismatch")}
    clients = {
        host: ControllerClient(get_transport(rabbit.urls[host]), host, timeout=30)
        for host in ("compute-a", "compute-b")
    }
    try:
        check_origin(servers, controller, collector, clients, before)
    finally:
        for client in clients.values():
            client._transport.cleanup()


def check_origin(servers, controller, collector, clients, before) -> None:
    own_a = fault(servers["a1"], "compute-a")
    theft = fault(servers["b1"], "compute-a")  # compute-a lies about compute-b's VM
    disguised = fault(servers["b1"], "compute-b")  # ... and says it is compute-b
    ack = clients["compute-a"].call("report_events", events=[own_a, theft, disguised])
    keys = {e["idempotency_key"] for e in (own_a, theft, disguised)}
    # Everything is acknowledged (the honest part is not held hostage), the lies
    # are named as rejected.
    assert set(ack["keys"]) == keys
    assert set(ack["rejected"]) == {theft["idempotency_key"], disguised["idempotency_key"]}
    # The real owner's report of the same VM works.
    own_b = fault(servers["b1"], "compute-b")
    assert clients["compute-b"].call("report_events", events=[own_b])["rejected"] == []
    # A forged context (host and the identity key) changes nothing: the
    # dispatcher overwrites it with the broker-validated user.
    forged = fault(servers["b1"], "compute-b")
    raw = clients["compute-a"]._client.prepare(timeout=30)
    ack = raw.call(
        {"host": "compute-b", BROKER_USER: PREFIX + "compute-b"},
        "report_events",
        events=[forged],
    )
    assert ack["rejected"] == [forged["idempotency_key"]]

    good = {own_a["idempotency_key"], own_b["idempotency_key"]}
    wait_until(lambda: good <= set(delivered(collector)), 30, interval=0.2)
    time.sleep(1.0)  # let any wrongly accepted report arrive too
    got = delivered(collector)
    lost = sum(1 for k in good if k not in got)
    doubled = sum(n - 1 for n in got.values() if n > 1)
    leaked = [k for k in (theft, disguised, forged) if k["idempotency_key"] in got]
    assert (lost, doubled, leaked) == (0, 0, [])
    # theft: Nova places it elsewhere; disguised and forged: the body names a
    # host that is not the sender's.
    assert rejected_metric(controller, "not_on_host") == before["not_on_host"] + 1
    assert rejected_metric(controller, "host_mismatch") == before["host_mismatch"] + 2
    status = controller.status()
    assert set(status["computes"]) >= {"compute-a", "compute-b"}


def test_broker_refuses_a_forged_user_id(rabbit) -> None:
    """RabbitMQ's validated user-ID: a connection of compute-a cannot publish as compute-b."""
    import amqp.exceptions
    import kombu

    with kombu.Connection(
        rabbit.urls["compute-a"].replace("rabbit://", "amqp://", 1),
        transport_options={"confirm_publish": True},
    ) as conn:
        producer = conn.Producer()
        producer.publish({"x": 1}, routing_key="nobody", user_id=PREFIX + "compute-a")
        with pytest.raises(amqp.exceptions.PreconditionFailed, match="user_id"):
            producer.publish({"x": 1}, routing_key="nobody", user_id=PREFIX + "compute-b")


def test_real_agent_reports_its_own_vms_and_nothing_else(
    rabbit, servers, controller, collector, short_tmp
) -> None:
    """The real compute agent with its own broker user: faults of its VM pass;
    a VM Nova places on compute-b, heartbeated by compute-a, is rejected."""
    with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
        mine = sim.add_vm(uuid=servers["a2"], interval_ms=100)
        stolen = sim.add_vm(uuid=servers["b1"], interval_ms=100)
        before = rejected_metric(controller, "not_on_host")
        with EngineProcess(
            os.path.join(short_tmp, "compute"),
            [mine, stolen],
            extra={
                "controller": {
                    "enabled": True,
                    "transport_url": rabbit.urls["compute-a"],
                    "messaging_config": None,
                    "spool_dir": os.path.join(short_tmp, "spool"),
                    "host": "compute-a",
                }
            },
        ) as engine:
            for vm in (mine, stolen):
                engine.wait_event("registered", vm.uuid, timeout=15)
            for vm in (mine, stolen):
                sim.freeze(vm.uuid)
            for vm in (mine, stolen):
                engine.wait_event("heartbeat_lost", vm.uuid)
            sent: List[Dict[str, Any]] = [
                e for e in engine.events() if e["kind"] in ("registered", "heartbeat_lost")
            ]
            wait_until(lambda: rejected_metric(controller, "not_on_host") >= before + 2, 30)
            wait_until(
                lambda: (
                    {
                        (e["instance_uuid"], e["kind"])
                        for e in sent
                        if e["instance_uuid"] == mine.uuid
                    }
                    <= {
                        (g["payload"]["instance_uuid"], g["payload"]["kind"]) for g in collector.got
                    }
                ),
                30,
                interval=0.2,
            )
            time.sleep(1.0)
            payloads = [g["payload"] for g in collector.got]
            mine_got = Counter(
                (p["kind"], round(p["monotonic"], 6))
                for p in payloads
                if p["instance_uuid"] == mine.uuid
            )
            mine_sent = [
                (e["kind"], round(e["monotonic"], 6))
                for e in sent
                if e["instance_uuid"] == mine.uuid
            ]
            lost = sum(1 for s in mine_sent if s not in mine_got)
            doubled = sum(n - 1 for n in mine_got.values() if n > 1)
            leaked = [p for p in payloads if p["instance_uuid"] == stolen.uuid]
            assert (lost, doubled, leaked) == (0, 0, [])
            # The rejected reports left the spool (acknowledged): nothing stuck.
            spool = os.path.join(short_tmp, "spool")
            wait_until(lambda: not [n for n in os.listdir(spool) if n.endswith(".json")], 15)
