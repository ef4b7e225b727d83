"""A RabbitMQ node dies under load: a private three-node cluster
(guest_ha_dev.testing.rabbitmq.RabbitMQCluster) with oslo.messaging's quorum
queues on every side (compute agent, controller, notification listener); the
real compute engine (simulated VMs), the real controller process. One node is
SIGKILLed while faults flow, then restarted: every fault event arrives at the
notification listener exactly once (0 lost, 0 doubled). And server-group
traffic between two hosts' VMs resumes after a node loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

pytest.importorskip("oslo_messaging")

from guest_ha.guest.sg_client import ServerGroupClient
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


@pytest.fixture(autouse=True)
def _quorum_overrides_cleared() -> Iterator[None]:
    """``quorum_collector`` sets the quorum options on this process's shared
    oslo.messaging config; later tests in the process must not inherit them."""
    yield
    from guest_ha.messaging.options import configure

    conf = configure()
    if "rabbit_quorum_queue" in conf.oslo_messaging_rabbit:
        for key in QUORUM:
            conf.clear_override(key, group="oslo_messaging_rabbit")


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


class SgGuest:
    """A simulated VM's pty channel, a real guest daemon on it, and a VNF app
    using the Python server-group client (collects the broadcasts it gets)."""

    def __init__(self, sim: VmSimulator, label: str, workdir: str) -> None:
        self.info = sim.add_vm("pty", name=f"sg-{label}")
        self.app_socket = os.path.join(workdir, f"{label}.app.sock")
        self.log = open(os.path.join(workdir, f"{label}.guestd.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                *("-m", "guest_ha.guest.daemon", "--config", os.devnull),
                *("--port", str(self.info.guest_port), "--name", label, "--interval-ms", "200"),
                *("--app-socket", self.app_socket, "--checks-dir", os.path.join(workdir, "none")),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.got: List[Tuple[str, str]] = []
        self.client: Optional[ServerGroupClient] = None

    def connect(self) -> None:
        wait_until(lambda: os.path.exists(self.app_socket), 15)
        self.client = ServerGroupClient(self.app_socket)
        self.client.on_broadcast(lambda src, data: self.got.append((src, data)))
        self.client.subscribe()
        self.client.start()

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def broadcast_until_received(sender: SgGuest, receiver: SgGuest, tag: str, timeout: float) -> int:
    """Broadcast ``tag-N`` every 0.5 s until the receiver gets one; return N."""
    assert sender.client is not None
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        sender.client.broadcast(f"{tag}-{n}")
        time.sleep(0.5)
        for src, data in list(receiver.got):
            if src == sender.info.uuid and str(data).startswith(f"{tag}-"):
                return n
        n += 1
    raise AssertionError(f"no {tag} broadcast arrived within {timeout} s: {receiver.got[-5:]}")


def test_server_group_traffic_resumes_after_a_node_loss(cluster, short_tmp) -> None:
    """Two compute agents (hosts sg-a, sg-b), one VM each in group "web" (file
    membership), the real controller; all on quorum queues. Broadcasts flow,
    the node everyone is connected to is SIGKILLed, and broadcasts in both
    directions flow again (datagrams are best effort: some sent while the
    services reconnect may be lost, which is what operations.md says), then
    again after the node is back."""
    msg_conf = os.path.join(short_tmp, "messaging.conf")
    with open(msg_conf, "w", encoding="utf-8") as fh:
        fh.write("[oslo_messaging_rabbit]\n" + "".join(f"{k} = {v}\n" for k, v in QUORUM.items()))
    with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
        guests = {label: SgGuest(sim, label, short_tmp) for label in ("a", "b")}
        groups_file = os.path.join(short_tmp, "groups.yaml")
        with open(groups_file, "w", encoding="utf-8") as fh:
            fh.write(f"groups:\n  web: [{guests['a'].info.uuid}, {guests['b'].info.uuid}]\n")
        sg = {
            "enabled": "true",
            "membership": "file",
            "groups_file": groups_file,
            "listen_notifications": "false",
        }
        engines: List[EngineProcess] = []
        try:
            with ControllerProcess(
                short_tmp,
                cluster.url,
                host="ctl-sg",
                extra={"oslo_messaging_rabbit": QUORUM, "server_groups": sg},
            ):
                for label, guest in guests.items():
                    info = guest.info
                    vm = {"uuid": info.uuid, "name": info.name, "socket": info.socket_path}
                    engines.append(
                        EngineProcess(
                            os.path.join(short_tmp, f"compute-{label}"),
                            extra={
                                "vms": [{**vm, "server_group": "web"}],
                                "controller": {
                                    "enabled": True,
                                    "transport_url": cluster.url,
                                    "messaging_config": msg_conf,
                                    "spool_dir": os.path.join(short_tmp, f"spool-{label}"),
                                    "host": f"sg-{label}",
                                },
                            },
                        ).start()
                    )
                for engine, guest in zip(engines, guests.values()):
                    engine.wait_event("registered", guest.info.uuid, timeout=30)
                    guest.connect()
                a, b = guests["a"], guests["b"]
                broadcast_until_received(a, b, "before", 60)
                cluster.kill(0)
                killed = time.monotonic()
                broadcast_until_received(a, b, "a-after-kill", 120)
                broadcast_until_received(b, a, "b-after-kill", 60)
                print(
                    f"server-group traffic resumed {time.monotonic() - killed:.1f} s after the kill"
                )
                cluster.start_node(0)
                broadcast_until_received(a, b, "after-restart", 120)
                assert all(src != a.info.uuid for src, _ in a.got)  # never its own
                assert [e.faults() for e in engines] == [[], []]
        finally:
            for engine in engines:
                engine.stop()
            for guest in guests.values():
                guest.stop()
