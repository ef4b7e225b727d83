"""Controllers sharing a PostgreSQL event store (oslo.db): a private PostgreSQL
server (guest_ha_dev.testing.postgres, Debian's binaries), a real RabbitMQ node,
the real compute engine (simulated VMs) and two real controller processes on
one database, each in its own network namespace (veth pair to this machine's
namespace, where PostgreSQL and RabbitMQ listen). One controller is SIGKILLed
mid-report; then the other is killed and the first restarted. A notification
listener counts every fault event: 0 lost, 0 doubled."""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Dict, Tuple

import pytest

pytest.importorskip("oslo_messaging")
pytest.importorskip("oslo_db")

from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.testing.controller import ControllerProcess, NotificationCollector
from guest_ha_dev.testing.netns import NetNamespace
from guest_ha_dev.testing.postgres import PostgresServer
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.integration

KINDS = ("unhealthy", "recovered", "heartbeat_lost")


def event_id(e: Dict) -> Tuple[str, str, float]:
    return (e["instance_uuid"], e["kind"], round(e["monotonic"], 6))


def lost_doubled(engine: EngineProcess, collector: NotificationCollector) -> Tuple[int, int]:
    sent = [event_id(e) for e in engine.events() if e["kind"] in KINDS]
    got = Counter(event_id(g["payload"]) for g in collector.got if g["payload"]["kind"] in KINDS)
    return sum(1 for s in sent if s not in got), sum(n - 1 for n in got.values() if n > 1)


def faults(sim: VmSimulator, engine: EngineProcess, vms) -> None:
    """One more fault and recovery per VM (heartbeat loss: never rate-limited)."""

    def count(kind: str) -> int:
        return sum(1 for e in engine.events() if e["kind"] == kind)

    lost, recovered = count("heartbeat_lost"), count("recovered")
    for vm in vms:
        sim.freeze(vm.uuid)
    wait_until(lambda: count("heartbeat_lost") >= lost + len(vms), 30, interval=0.1)
    for vm in vms:
        sim.thaw(vm.uuid)
    wait_until(lambda: count("recovered") >= recovered + len(vms), 30, interval=0.1)


def test_two_controllers_one_postgres_killed_in_turn(short_tmp) -> None:
    with (
        NetNamespace(1) as ns1,
        NetNamespace(2) as ns2,
        PostgresServer(listen=[ns1.host_address, ns2.host_address]) as pg,
        RabbitMQNode(listen=[ns1.host_address, ns2.host_address]) as rabbit,
    ):
        pg.create_database("guest_ha")
        rabbit.add_user("guest-ha-controller", "ctl-secret")
        spaces = {"ctl-1": ns1, "ctl-2": ns2}
        collector = NotificationCollector(rabbit.url)

        def controller(name: str) -> ControllerProcess:
            ns = spaces[name]
            url = rabbit.url_for("guest-ha-controller", "ctl-secret")
            return ControllerProcess(
                os.path.join(short_tmp, name),
                url.replace("127.0.0.1", ns.host_address),
                host=name,
                database=pg.url("guest_ha", driver="postgresql+psycopg2", address=ns.host_address),
                reporters=["notification"],
                netns=ns.name,
                status_address=ns.address,
            ).start()

        try:
            with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
                vms = [sim.add_vm(interval_ms=100) for _ in range(3)]
                ctl = {"ctl-1": controller("ctl-1"), "ctl-2": controller("ctl-2")}
                with EngineProcess(
                    os.path.join(short_tmp, "compute"),
                    vms,
                    extra={
                        "controller": {
                            "enabled": True,
                            "transport_url": rabbit.url,
                            "messaging_config": None,
                            "spool_dir": os.path.join(short_tmp, "spool"),
                            "host": "compute-a",
                        }
                    },
                ) as engine:
                    for vm in vms:
                        engine.wait_event("registered", vm.uuid, timeout=30)
                    faults(sim, engine, vms)
                    ctl["ctl-1"].kill()  # mid-report: whatever it held is cut off
                    faults(sim, engine, vms)
                    wait_until(lambda: lost_doubled(engine, collector)[0] == 0, 90, interval=0.5)
                    ctl["ctl-2"].kill()
                    faults(sim, engine, vms)  # no controller: spooled meanwhile
                    ctl["ctl-1"] = controller("ctl-1")
                    faults(sim, engine, vms)
                    wait_until(lambda: lost_doubled(engine, collector)[0] == 0, 90, interval=0.5)
                    time.sleep(2.0)  # anything doubled arrives meanwhile
                    sent = [e for e in engine.events() if e["kind"] in KINDS]
                    assert len(sent) >= 4 * 2 * len(vms)
                    assert lost_doubled(engine, collector) == (0, 0)
                    # Both controllers wrote to the one shared database.
                    hosts = pg.psql("SELECT COUNT(*) FROM events", "guest_ha").strip()
                    assert int(hosts) >= len(sent)
                for c in ctl.values():
                    c.stop()
        finally:
            collector.stop()
