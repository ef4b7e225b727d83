"""Faults from a compute agent to the reporters, over a real RabbitMQ node:
compute engine process (simulated VMs) -> spool -> RPC -> controller
process(es) -> event store -> reporters (log, notification). A notification
listener counts what arrives, by idempotency key: nothing may be lost or doubled,
whatever is killed or restarted on the way."""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Dict, List, Tuple

import pytest

pytest.importorskip("oslo_messaging")

from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.testing.controller import ControllerProcess, NotificationCollector
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rabbit():
    with RabbitMQNode() as node:
        yield node


@pytest.fixture
def collector(rabbit):
    col = NotificationCollector(rabbit.url)
    yield col
    col.stop()


def compute(workdir: str, url: str, vms, host: str = "compute-a") -> EngineProcess:
    return EngineProcess(
        os.path.join(workdir, "compute"),
        vms,
        extra={
            "controller": {
                "enabled": True,
                "transport_url": url,
                "messaging_config": None,
                "spool_dir": os.path.join(workdir, "spool"),
                "host": host,
            }
        },
    )


def event_id(e: Dict) -> Tuple[str, str, float]:
    return (e["instance_uuid"], e["kind"], round(e["monotonic"], 6))


def check_exactly_once(
    engine: EngineProcess,
    collector: NotificationCollector,
    kinds=("unhealthy", "recovered", "heartbeat_lost"),
) -> Tuple[int, int]:
    """(lost, doubled) between the compute agent's events and the notifications."""
    sent = [event_id(e) for e in engine.events() if e["kind"] in kinds]
    got = Counter(event_id(g["payload"]) for g in collector.got if g["payload"]["kind"] in kinds)
    lost = sum(1 for s in sent if s not in got)
    doubled = sum(n - 1 for n in got.values() if n > 1)
    return lost, doubled


def toggle_health(sim: VmSimulator, vms, rounds: int, pause: float = 0.25) -> None:
    for _ in range(rounds):
        for vm in vms:
            sim.set_health(vm.uuid, False, "test fault")
        time.sleep(pause)
        for vm in vms:
            sim.set_health(vm.uuid, True)
        time.sleep(pause)


def wait_delivered(engine, collector, timeout: float = 60.0) -> None:
    wait_until(lambda: check_exactly_once(engine, collector)[0] == 0, timeout, interval=0.2)


def test_fault_reaches_log_and_notification_reporters(rabbit, collector, short_tmp) -> None:
    with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
        vm = sim.add_vm(interval_ms=100)
        with (
            ControllerProcess(
                short_tmp, rabbit.url, host="ctl-1", reporters=["log", "notification"]
            ) as ctl,
            compute(short_tmp, rabbit.url, [vm]) as engine,
        ):
            engine.wait_event("registered", vm.uuid, timeout=15)
            sim.freeze(vm.uuid)
            engine.wait_event("heartbeat_lost", vm.uuid)
            sim.thaw(vm.uuid)
            engine.wait_event("recovered", vm.uuid)

            def reported():
                return [g for g in collector.got if g["payload"]["kind"] != "registered"]

            wait_until(lambda: len(reported()) >= 2, 20)
            assert collector.got[0]["event_type"] == "guest_ha.instance.registered"
            lost = reported()[0]
            assert lost["event_type"] == "guest_ha.instance.heartbeat_lost"
            assert lost["payload"]["instance_uuid"] == vm.uuid
            assert lost["payload"]["compute_host"] == "compute-a"
            assert lost["publisher_id"] == "guest-ha-controller.ctl-1"
            assert reported()[1]["event_type"] == "guest_ha.instance.recovered"
            status = ctl.status()
            assert status["faults_by_kind"] == {"heartbeat_lost": 1}
            assert status["computes"]["compute-a"]["events"] >= 2
            assert status["reporters"]["notification"]["sent"] >= 2
            assert f"[instance {vm.uuid}] heartbeat_lost on compute-a" in ctl.log_text()
            metrics = ctl.metrics()
            assert 'guest_ha_faults_total{kind="heartbeat_lost"} 1' in metrics
            assert 'guest_ha_reporter_sent_total{reporter="notification"}' in metrics
            assert check_exactly_once(engine, collector) == (0, 0)


def test_controller_killed_mid_report(rabbit, collector, short_tmp) -> None:
    db = os.path.join(short_tmp, "shared.sqlite")
    with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
        vms = [sim.add_vm(interval_ms=100) for _ in range(3)]
        ctl = ControllerProcess(
            short_tmp, rabbit.url, host="ctl-1", database=db, reporters=["notification"]
        ).start()
        with compute(short_tmp, rabbit.url, vms) as engine:
            for vm in vms:
                engine.wait_event("registered", vm.uuid, timeout=15)
            toggle_health(sim, vms, 2)
            ctl.kill()  # SIGKILL: whatever it was doing is cut off
            toggle_health(sim, vms, 2)  # spooled on the compute meanwhile
            ctl = ControllerProcess(
                short_tmp, rabbit.url, host="ctl-1", database=db, reporters=["notification"]
            ).start()
            toggle_health(sim, vms, 1)
            wait_delivered(engine, collector)
            time.sleep(1.0)
            assert check_exactly_once(engine, collector) == (0, 0)
            ctl.stop()


def test_rabbitmq_restarted_mid_report(rabbit, collector, short_tmp) -> None:
    with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
        vms = [sim.add_vm(interval_ms=100) for _ in range(3)]
        with (
            ControllerProcess(short_tmp, rabbit.url, host="ctl-1", reporters=["notification"]),
            compute(short_tmp, rabbit.url, vms) as engine,
        ):
            for vm in vms:
                engine.wait_event("registered", vm.uuid, timeout=15)
            toggle_health(sim, vms, 1)
            rabbit.restart()
            toggle_health(sim, vms, 2)
            wait_delivered(engine, collector, timeout=120)
            time.sleep(1.0)
            assert check_exactly_once(engine, collector) == (0, 0)


def test_compute_killed_after_spooling_before_ack(rabbit, collector, short_tmp) -> None:
    db = os.path.join(short_tmp, "shared.sqlite")
    with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
        vms = [sim.add_vm(interval_ms=100) for _ in range(2)]
        first = compute(short_tmp, rabbit.url, vms).start()  # no controller yet: spooled
        for vm in vms:
            first.wait_event("registered", vm.uuid, timeout=15)
        toggle_health(sim, vms, 2)
        spooled = [f for f in os.listdir(os.path.join(short_tmp, "spool")) if f.endswith(".json")]
        assert len(spooled) >= 8
        first.stop(9)  # SIGKILL after spooling, before any acknowledgement
        sent_before = first.events()
        with ControllerProcess(
            short_tmp, rabbit.url, host="ctl-1", database=db, reporters=["notification"]
        ):
            second = compute(short_tmp, rabbit.url, vms).start()
            try:
                wait_until(
                    lambda: (
                        not [
                            f
                            for f in os.listdir(os.path.join(short_tmp, "spool"))
                            if f.endswith(".json")
                        ]
                    ),
                    60,
                )
                time.sleep(1.0)
            finally:
                second.stop()
        replayed = Counter(event_id(g["payload"]) for g in collector.got)
        expected = [event_id(e) for e in sent_before if e["kind"] in ("unhealthy", "recovered")]
        assert [e for e in expected if e not in replayed] == []
        assert all(n == 1 for n in replayed.values())


def test_two_controllers_share_the_work_and_report_each_fault_once(
    rabbit, collector, short_tmp
) -> None:
    db = os.path.join(short_tmp, "shared.sqlite")
    with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
        vms = [sim.add_vm(interval_ms=100) for _ in range(4)]
        with (
            ControllerProcess(
                short_tmp, rabbit.url, host="ctl-1", database=db, reporters=["notification"]
            ) as one,
            ControllerProcess(
                short_tmp, rabbit.url, host="ctl-2", database=db, reporters=["notification"]
            ) as two,
            compute(short_tmp, rabbit.url, vms) as engine,
        ):
            for vm in vms:
                engine.wait_event("registered", vm.uuid, timeout=15)
            toggle_health(sim, vms, 4, pause=0.15)
            wait_delivered(engine, collector)
            time.sleep(1.0)
            assert check_exactly_once(engine, collector) == (0, 0)
            handled: List[int] = [
                sum(c.get("events", 0) for c in ctl.status()["computes"].values())
                for ctl in (one, two)
            ]
            assert all(n > 0 for n in handled), handled  # both took part


def test_reporter_down_for_30_seconds_then_back(rabbit, short_tmp) -> None:
    """The notification reporter publishes to a second broker, stopped for 30 s.

    The collector consumes the default ``notifications.info`` queue (no pool), as
    Ceilometer does: the publisher declares that queue itself, so a notification
    retried right after the broker is back lands there even before the consumer
    has reconnected. A pool queue is the consumer's own and non-durable: between
    the broker's restart and the consumer's redeclaration, the broker would drop
    what is published (docs/messaging.md).
    """
    with RabbitMQNode() as bus:
        collector = NotificationCollector(bus.url, pool=None)
        try:
            with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
                vms = [sim.add_vm(interval_ms=100) for _ in range(2)]
                with (
                    ControllerProcess(
                        short_tmp,
                        rabbit.url,
                        host="ctl-1",
                        reporters=["notification"],
                        notification_url=bus.url,
                    ) as ctl,
                    compute(short_tmp, rabbit.url, vms) as engine,
                ):
                    for vm in vms:
                        engine.wait_event("registered", vm.uuid, timeout=15)
                    toggle_health(sim, vms, 1)
                    wait_delivered(engine, collector)
                    bus.stop()
                    down_at = time.monotonic()
                    toggle_health(sim, vms, 2)
                    time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
                    assert ctl.status()["reporters"]["notification"]["errors"] > 0
                    bus.start()
                    wait_delivered(engine, collector, timeout=120)
                    time.sleep(1.0)
                    assert check_exactly_once(engine, collector) == (0, 0)
        finally:
            collector.stop()
