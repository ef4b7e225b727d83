"""Server group messaging end to end, with every component real except the VMs'
QEMU: real guest daemon processes (each on a pseudo-terminal standing in for
its virtio port, relayed by guest_ha_dev.sim), VNF apps using the Python client,
two compute agent processes posing as hosts A and B, one controller process,
a private RabbitMQ node, and the real Keystone + nova-api holding the servers
and server groups (seeded with Nova's own objects). Nova cannot boot servers
here, so its versioned notifications are published by the test in Nova's own
format (guest_ha_dev.testing.nova_notify). The real-VM case is in tests/e2e."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid as uuidlib
from typing import Any, Dict, Iterator, List

import pytest

pytest.importorskip("oslo_messaging")
pytest.importorskip("keystoneauth1")

from guest_ha.guest.sg_client import (
    MessageTooLarge,
    NotInServerGroup,
    ServerGroupClient,
)
from guest_ha.protocol import encode_frame
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.nova_notify import NovaPublisher, instance_action_payload
from guest_ha_dev.testing.openstack import openstack_fixture
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.integration

cloud = openstack_fixture(scope="module")
HOSTS = ("sg-host-a", "sg-host-b")
# VM -> (host, group): A, B on host A; C on host B, all in "web"; D (host B) in
# "other"; E (host A) in no group.
LAYOUT = {
    "A": (HOSTS[0], "web"),
    "B": (HOSTS[0], "web"),
    "C": (HOSTS[1], "web"),
    "D": (HOSTS[1], "other"),
    "E": (HOSTS[0], None),
}


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitMQNode]:
    with RabbitMQNode() as node:
        yield node


class Guest:
    """A VM: the simulator's pty channel, a real guest daemon, and an app."""

    def __init__(self, label: str, info: Any, workdir: str) -> None:
        self.label = label
        self.info = info
        self.app_socket = os.path.join(workdir, f"{label}.app.sock")
        self.log = open(os.path.join(workdir, f"{label}.guestd.log"), "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "guest_ha.guest.daemon",
                "--config",
                os.devnull,
                "--port",
                str(info.guest_port),
                "--name",
                label,
                "--interval-ms",
                "200",
                "--app-socket",
                self.app_socket,
                "--checks-dir",
                os.path.join(workdir, "none"),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.broadcasts: List[Any] = []
        self.notifications: List[Dict[str, Any]] = []
        self.client: Any = None

    def connect(self) -> None:
        wait_until(lambda: os.path.exists(self.app_socket), 15)
        self.client = ServerGroupClient(self.app_socket)
        self.client.on_broadcast(lambda src, data: self.broadcasts.append((src, data)))
        self.client.on_notification(lambda data: self.notifications.append(data))
        self.client.subscribe()
        self.client.start()

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def world(rabbit, cloud, tmp_path_factory, short_tmp_module):
    workdir = short_tmp_module
    clouds = cloud.clouds_yaml(os.path.join(workdir, "clouds.yaml"))
    for host in HOSTS:
        cloud.create_host(host)
    cloud.create_flavor("sg.small", {"guest_ha:server_group_messaging": "true"})
    groups = {name: cloud.create_server_group(name)["uuid"] for name in ("web", "other")}
    sim = VmSimulator(os.path.join(workdir, "vms")).start()
    vms: Dict[str, Any] = {}
    for label, (host, group) in LAYOUT.items():
        uuid = str(uuidlib.uuid4())
        cloud.create_server(
            uuid, f"vm-{label}", "sg.small", host, server_group=groups[group] if group else None
        )
        vms[label] = sim.add_vm("pty", uuid=uuid, name=f"vm-{label}")
    guests = {label: Guest(label, info, workdir) for label, info in vms.items()}
    controller_extra = {
        "server_groups": {
            "enabled": "true",
            "membership": "nova",
            "clouds_yaml": str(clouds),
            "cloud": "guest-ha",
            "notification_transport_url": rabbit.url,
        }
    }
    db = os.path.join(workdir, "controller.sqlite")
    ctl = ControllerProcess(
        workdir, rabbit.url, host="ctl-1", database=db, extra=controller_extra
    ).start()
    engines = []
    for host in HOSTS:
        mine = [
            {
                "uuid": vms[label].uuid,
                "name": vms[label].name,
                "socket": vms[label].socket_path,
                "server_group": group or "none",
            }
            for label, (h, group) in LAYOUT.items()
            if h == host
        ]
        engines.append(
            EngineProcess(
                os.path.join(workdir, host),
                extra={
                    "vms": mine,
                    "controller": {
                        "enabled": True,
                        "transport_url": rabbit.url,
                        "messaging_config": None,
                        "host": host,
                        "spool_dir": os.path.join(workdir, host, "spool"),
                    },
                },
            ).start()
        )
    state = {
        "sim": sim,
        "vms": vms,
        "guests": guests,
        "engines": engines,
        "ctl": ctl,
        "rabbit": rabbit,
        "workdir": workdir,
        "db": db,
        "extra": controller_extra,
    }
    try:
        for engine in engines:
            for label, (host, _group) in LAYOUT.items():
                if engine.workdir.endswith(host):
                    engine.wait_event("registered", vms[label].uuid, timeout=30)
        for guest in guests.values():
            guest.connect()
        yield state
    finally:
        for guest in guests.values():
            guest.stop()
        for engine in engines:
            engine.stop()
        state["ctl"].stop()
        sim.stop()


@pytest.fixture(scope="module")
def short_tmp_module() -> Iterator[str]:
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="gha-sg-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def reset(world) -> None:
    for guest in world["guests"].values():
        guest.broadcasts.clear()
        guest.notifications.clear()


def broadcast_reaches_exactly_b_and_c(world, payload: Dict[str, Any]) -> None:
    g, vms = world["guests"], world["vms"]
    wait_until(lambda: g["A"].client.request_status(timeout=5), 20, interval=0.5)
    reset(world)
    g["A"].client.broadcast(payload)
    wait_until(lambda: g["B"].broadcasts and g["C"].broadcasts, 15)
    time.sleep(0.5)
    assert g["B"].broadcasts == [(vms["A"].uuid, payload)]
    assert g["C"].broadcasts == [(vms["A"].uuid, payload)]
    for other in ("A", "D", "E"):
        assert g[other].broadcasts == [], other


def test_broadcast_reaches_exactly_the_peers_on_both_hosts(world) -> None:
    """Seeded rows: servers and server groups on two hosts (``world``): the VMs are
    simulated guests posing as two compute hosts, and the real Nova here has one;
    the real flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    broadcast_reaches_exactly_b_and_c(world, {"role": "active", "epoch": 1})


def test_status_lists_every_member_then_done(world) -> None:
    """Seeded rows: servers and server groups on two hosts (``world``): the VMs are
    simulated guests posing as two compute hosts, and the real Nova here has one;
    the real flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    members = world["guests"]["B"].client.request_status(timeout=10)
    by_uuid = {m["uuid"]: m for m in members}
    assert set(by_uuid) == {world["vms"][x].uuid for x in ("A", "B", "C")}
    assert by_uuid[world["vms"]["C"].uuid]["host"] == HOSTS[1]
    assert all(m["state"] == "active" for m in members)


def test_nova_state_change_is_notified_to_the_peers(world) -> None:
    """Seeded rows: servers and server groups on two hosts (``world``): the VMs are
    simulated guests posing as two compute hosts, and the real Nova here has one;
    the real flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    vms, g = world["vms"], world["guests"]
    reset(world)
    nova = NovaPublisher(world["rabbit"].url)
    try:
        nova.publish(
            HOSTS[1],
            "instance.power_off.end",
            instance_action_payload(
                vms["C"].uuid, "vm-C", HOSTS[1], state="stopped", power_state="shutdown"
            ),
        )
        wait_until(lambda: g["A"].notifications and g["B"].notifications, 20)
    finally:
        nova.close()
    note = g["A"].notifications[0]
    assert note["uuid"] == vms["C"].uuid and note["state"] == "stopped"
    assert note["power_state"] == "shutdown"
    assert g["D"].notifications == [] and g["E"].notifications == []


def test_vm_in_no_group_is_refused(world) -> None:
    """Seeded rows: servers and server groups on two hosts (``world``): the VMs are
    simulated guests posing as two compute hosts, and the real Nova here has one;
    the real flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    with pytest.raises(NotInServerGroup):
        world["guests"]["E"].client.request_status(timeout=10)


def test_hostile_guests_are_contained(world) -> None:
    """Seeded rows: servers and server groups on two hosts (``world``): the VMs are
    simulated guests posing as two compute hosts, and the real Nova here has one;
    the real flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    g, vms, sim = world["guests"], world["vms"], world["sim"]
    with pytest.raises(MessageTooLarge):
        g["D"].client.broadcast("x" * 4000)
    # Bypass the daemon: a spoofed source_instance, an oversized broadcast,
    # malformed JSON and a flood, written straight onto D's channel.
    spoof = (
        b'{"version":1,"source_addr":"server_group","dest_addr":"server_group",'
        b'"data":{"msg_type":"broadcast","source_instance":"'
        + vms["A"].uuid.encode()
        + b'","data":"forged"}}'
    )
    big = (
        b'{"version":1,"source_addr":"server_group","dest_addr":"server_group",'
        b'"data":{"msg_type":"broadcast","data":"' + b"y" * 3100 + b'"}}'
    )
    sim.inject(vms["D"].uuid, encode_frame(spoof) + encode_frame(big) + b"\n{oops\n")
    flood = (
        b'{"version":1,"source_addr":"server_group","dest_addr":"server_group",'
        b'"data":{"msg_type":"broadcast","data":"spam"}}'
    )
    reset(world)
    sim.inject(vms["D"].uuid, encode_frame(flood) * 2000)
    time.sleep(2.0)
    assert not any(b[1] == "forged" for x in "ABCE" for b in g[x].broadcasts)
    assert all(g[x].broadcasts == [] for x in "ABCE")  # D's group has no other member
    status = {v["instance_uuid"]: v for e in world["engines"] for v in e.status()["vms"]}
    d = status[vms["D"].uuid]["counters"]
    assert d["bad_frames"] >= 3 and d["rate_limited"] > 0
    # The flooder may hurt itself (its own heartbeats wait behind its flood);
    # nobody else may notice anything.
    for engine in world["engines"]:
        assert [f for f in engine.faults() if f["instance_uuid"] != vms["D"].uuid] == []
    # The well-behaved group still works.
    broadcast_reaches_exactly_b_and_c(world, {"after": "flood"})


def test_controller_restart_keeps_membership(world) -> None:
    """Seeded rows: servers and server groups on two hosts (``world``): the VMs are
    simulated guests posing as two compute hosts, and the real Nova here has one;
    the real flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    world["ctl"].stop()
    world["ctl"] = ControllerProcess(
        world["workdir"],
        world["rabbit"].url,
        host="ctl-1",
        database=world["db"],
        extra=world["extra"],
    ).start()
    broadcast_reaches_exactly_b_and_c(world, {"role": "active", "epoch": 2})
    members = world["guests"]["C"].client.request_status(timeout=10)
    assert {m["uuid"] for m in members} == {world["vms"][x].uuid for x in ("A", "B", "C")}
