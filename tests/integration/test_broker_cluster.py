"""A RabbitMQ node dies under load: a private three-node cluster
(guest_ha_dev.testing.rabbitmq.RabbitMQCluster) with oslo.messaging's quorum
queues on every side (compute agent, controller, notification listener); the
real compute engine (simulated VMs), the real controller process. One node is
SIGKILLed while faults flow, then restarted: every fault event arrives at the
notification listener exactly once (0 lost, 0 doubled)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from typing import Dict, Tuple

import pytest

pytest.importorskip("oslo_messaging")

from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.testing.controller import ControllerProcess, NotificationCollector
from guest_ha_dev.testing.rabbitmq import RabbitMQCluster

pytestmark = pytest.mark.integration

#: What operators set (docs/operations.md, "Multi-host high availability").
QUORUM = {"rabbit_quorum_queue": "true", "rabbit_transient_quorum_queue": "true"}
KINDS = ("unhealthy", "recovered", "heartbeat_lost")


@pytest.fixture(scope="module")
def cluster():
    with RabbitMQCluster(3) as c:
        yield c


def quorum_collector(url: str) -> NotificationCollector:
    """The test's listener, with the same queue settings as the services."""
    from oslo_messaging._drivers import impl_rabbit

    from guest_ha.messaging.options import configure

    conf = configure()
    if "rabbit_quorum_queue" not in conf.oslo_messaging_rabbit:
        conf.register_opts(impl_rabbit.rabbit_opts, group="oslo_messaging_rabbit")
    for key in QUORUM:
        conf.set_override(key, True, group="oslo_messaging_rabbit")
    return NotificationCollector(url)


def event_id(e: Dict) -> Tuple[str, str, float]:
    return (e["instance_uuid"], e["kind"], round(e["monotonic"], 6))


def lost_doubled(engine: EngineProcess, collector: NotificationCollector) -> Tuple[int, int]:
    sent = [event_id(e) for e in engine.events() if e["kind"] in KINDS]
    got = Counter(event_id(g["payload"]) for g in collector.got if g["payload"]["kind"] in KINDS)
    return sum(1 for s in sent if s not in got), sum(n - 1 for n in got.values() if n > 1)


def toggle(sim: VmSimulator, vms, rounds: int, pause: float = 0.3) -> None:
    for _ in range(rounds):
        for vm in vms:
            sim.set_health(vm.uuid, False, "test fault")
        time.sleep(pause)
        for vm in vms:
            sim.set_health(vm.uuid, True)
        time.sleep(pause)


def test_node_killed_mid_report_loses_and_doubles_nothing(cluster, short_tmp) -> None:
    msg_conf = os.path.join(short_tmp, "messaging.conf")
    with open(msg_conf, "w", encoding="utf-8") as fh:
        fh.write("[oslo_messaging_rabbit]\n" + "".join(f"{k} = {v}\n" for k, v in QUORUM.items()))
    collector = quorum_collector(cluster.url)
    try:
        with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
            vms = [sim.add_vm(interval_ms=100) for _ in range(3)]
            with (
                ControllerProcess(
                    short_tmp,
                    cluster.url,
                    host="ctl-1",
                    reporters=["notification"],
                    extra={"oslo_messaging_rabbit": QUORUM},
                ),
                EngineProcess(
                    os.path.join(short_tmp, "compute"),
                    vms,
                    extra={
                        "controller": {
                            "enabled": True,
                            "transport_url": cluster.url,
                            "messaging_config": msg_conf,
                            "spool_dir": os.path.join(short_tmp, "spool"),
                            "host": "compute-a",
                        }
                    },
                ) as engine,
            ):
                for vm in vms:
                    engine.wait_event("registered", vm.uuid, timeout=30)
                toggle(sim, vms, 2)
                res = cluster.nodes[1].ctl(
                    "rabbitmqctl", "-q", "list_queues", "name", "type", "--formatter", "json"
                )
                types = {q["name"]: q["type"] for q in json.loads(res.stdout)}
                assert types["guest_ha_controller"] == "quorum"
                assert types["guest_ha_compute.compute-a"] == "quorum"
                # Everyone connected to the first node listed: kill that one.
                cluster.kill(0)
                before = len([e for e in engine.events() if e["kind"] in KINDS])
                for vm in vms:  # faults (never rate-limited) while the node is dead
                    sim.freeze(vm.uuid)
                for vm in vms:
                    engine.wait_event("heartbeat_lost", vm.uuid)
                for vm in vms:
                    sim.thaw(vm.uuid)
                toggle(sim, vms, 2)
                during = len([e for e in engine.events() if e["kind"] in KINDS]) - before
                wait_until(lambda: lost_doubled(engine, collector)[0] == 0, 120, interval=0.5)
                cluster.start_node(0)
                toggle(sim, vms, 1)
                wait_until(lambda: lost_doubled(engine, collector)[0] == 0, 120, interval=0.5)
                time.sleep(2.0)  # anything doubled arrives meanwhile
                assert during >= len(vms)
                assert lost_doubled(engine, collector) == (0, 0)
    finally:
        collector.stop()
