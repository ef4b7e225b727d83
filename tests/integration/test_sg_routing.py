"""Server group routing by the controller, over a real RabbitMQ node, with
membership from the real nova-api (Keystone-authenticated) of
``guest_ha_dev.testing.openstack``; servers and server groups are seeded with
Nova's own objects (``nova.objects.Instance``/``InstanceGroup``).

The controller runs in this process (``ControllerService`` + its endpoint on a
real oslo.messaging RPC server, router built by ``build_router`` from
``[server_groups]`` options, exactly as ``guest-ha-controller run`` does).
Two fake compute hosts record the ``sg_deliver`` they get, as the agent does:
as datagrams on their per-host queue (``guest_ha.messaging.datagrams``, the
default transport) and as RPC casts on their per-host topic
(``serve_compute``). Compute agents' relays are sent as the real ``sg_relay``
RPC casts on the controller topic, which the controller still serves (its
datagram receiver is tested in test_sg_datagrams.py).

There is no nova-compute here, so nothing in Nova publishes notifications:
to simulate Nova publishing a versioned notification, the test publishes one
itself with an ``oslo_messaging.Notifier`` (driver ``messagingv2``) on
exchange ``nova``, topic ``versioned_notifications``, with Nova's real payload
format (``InstanceActionPayload`` / ``ServerGroupPayload`` as
``nova_object.*`` dicts, field names and values as Nova sends them).

Layout: group ``web`` = A (compute-a), B (compute-a), C (compute-b);
group ``db`` = D (compute-b); E (compute-a) is in no group.
"""

from __future__ import annotations

import os
import threading
import uuid as uuidlib
from typing import Any, Dict, Iterator, List

import pytest

pytest.importorskip("oslo_messaging")
pytest.importorskip("keystoneauth1")

from oslo_config import cfg

from guest_ha.controller import options as controller_options
from guest_ha.controller.reporters.log import LogReporter
from guest_ha.controller.server_groups import (
    build_router,
    start_datagram_receiver,
    start_listeners,
)
from guest_ha.controller.service import ControllerService
from guest_ha.messaging import options
from guest_ha.messaging.datagrams import Datagrams
from guest_ha.messaging.payloads import SG_DELIVER
from guest_ha.messaging.rpc import (
    ControllerClient,
    get_transport,
    serve_compute,
    serve_controller,
    stop_server,
)
from guest_ha_dev.sim.harness import wait_until
from guest_ha_dev.testing.nova_notify import (
    NovaPublisher,
    instance_action_payload,
    server_group_payload,
)
from guest_ha_dev.testing.openstack import openstack_fixture
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.integration

cloud = openstack_fixture(scope="module")

HOST_A, HOST_B = "compute-a", "compute-b"


class RecordingCompute:
    """What a compute agent's RPC endpoint gets (``sg_deliver`` casts)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.casts: List[List[Dict[str, Any]]] = []
        self.lock = threading.Lock()

    def sg_deliver(self, ctxt: Dict[str, Any], deliveries: List[Dict[str, Any]]) -> None:
        with self.lock:
            self.casts.append(deliveries)

    def items(self, msg_type: str = "") -> List[Dict[str, Any]]:
        with self.lock:
            return [d for c in self.casts for d in c if not msg_type or d["msg_type"] == msg_type]

    def clear(self) -> None:
        with self.lock:
            self.casts.clear()


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitMQNode]:
    with RabbitMQNode() as node:
        yield node


@pytest.fixture(scope="module")
def seeded(cloud) -> Dict[str, str]:
    cloud.create_flavor("sg.small", {"guest_ha:server_group_messaging": "true"})
    web = cloud.create_server_group("web", "anti-affinity")["uuid"]
    db = cloud.create_server_group("db", "affinity")["uuid"]
    vms = {k: str(uuidlib.uuid4()) for k in "ABCDE"}
    cloud.create_server(vms["A"], "vnf-a", "sg.small", HOST_A, server_group=web)
    cloud.create_server(vms["B"], "vnf-b", "sg.small", HOST_A, server_group=web)
    cloud.create_server(vms["C"], "vnf-c", "sg.small", HOST_B, server_group=web)
    cloud.create_server(vms["D"], "db-d", "sg.small", HOST_B, server_group=db)
    cloud.create_server(vms["E"], "loner", "sg.small", HOST_A)
    return {**vms, "web": web, "db": db}


class Controller:
    """An in-process controller with server group routing (nova membership)."""

    def __init__(self, workdir: str, transport: Any) -> None:
        conf = cfg.CONF
        self.service = ControllerService(
            database=os.path.join(workdir, "controller.sqlite"),
            reporters={"log": LogReporter()},
            host="ctl-1",
            server_groups=build_router(conf, transport),
        )
        self.service.start()
        start_datagram_receiver(self.service.server_groups, conf, self.service.endpoint)
        start_listeners(self.service.server_groups, conf)
        self.server = serve_controller(transport, [self.service.endpoint], "ctl-1")

    @property
    def router(self) -> Any:
        return self.service.server_groups

    def stop(self) -> None:
        stop_server(self.server)
        self.service.stop()


@pytest.fixture(scope="module")
def env(rabbit, cloud, seeded, tmp_path_factory) -> Iterator[Dict[str, Any]]:
    workdir = str(tmp_path_factory.mktemp("sg"))
    clouds = cloud.clouds_yaml(os.path.join(workdir, "clouds.yaml"))
    conf = options.configure(rabbit.url)
    controller_options.register_opts(conf)
    overrides = {
        "enabled": True,
        "membership": "nova",
        "clouds_yaml": str(clouds),
        "cloud": "guest-ha",
        "cache_ttl_s": 600.0,
        "notification_transport_url": rabbit.url,
        "notification_pool": "guest-ha-test-" + uuidlib.uuid4().hex[:6],
    }
    for key, value in overrides.items():
        conf.set_override(key, value, group="server_groups")
    transport = get_transport(rabbit.url)
    computes = {h: RecordingCompute(h) for h in (HOST_A, HOST_B)}
    servers = [serve_compute(transport, [c], h) for h, c in computes.items()]
    # Deliveries come as datagrams ([guest_ha] server_group_transport's default).
    datagrams = Datagrams(conf)
    receivers = [
        datagrams.receiver(datagrams.compute_queue(h), c, [SG_DELIVER], name=f"dg-{h}").start()
        for h, c in computes.items()
    ]
    for receiver in receivers:
        assert receiver.consuming.wait(15), "datagram receiver never consumed"
    controller = Controller(workdir, transport)
    relay = ControllerClient(transport, HOST_A)
    nova = NovaPublisher(rabbit.url)
    state = {
        "workdir": workdir,
        "transport": transport,
        "computes": computes,
        "controller": controller,
        "relay": relay,
        "nova": nova,
        "vms": seeded,
    }
    try:
        yield state
    finally:
        nova.close()
        state["controller"].stop()
        for server in servers:
            stop_server(server)
        for receiver in receivers:
            receiver.stop()
        transport.cleanup()
        for key in overrides:
            conf.clear_override(key, group="server_groups")


def delivered_to(env, msg_type: str) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}
    for host, compute in env["computes"].items():
        for item in compute.items(msg_type):
            out.setdefault(item["instance_uuid"], []).append({**item, "host": host})
    return out


def clear(env) -> None:
    for compute in env["computes"].values():
        compute.clear()


def relay(env, host: str, vm: str, msg_type: str, fields: Dict[str, Any]) -> None:
    env["relay"].cast(
        "sg_relay",
        host=host,
        instance_uuid=env["vms"][vm],
        msg_type=msg_type,
        fields=fields,
        group=None,
    )


def check_broadcast(env, *extra: str) -> None:
    vms = env["vms"]
    expected = {vms["B"], vms["C"], *extra}
    clear(env)
    relay(env, HOST_A, "A", "broadcast", {"data": {"role": "active", "epoch": 3}})
    wait_until(lambda: len(delivered_to(env, "broadcast")) >= len(expected), 10)
    got = delivered_to(env, "")
    assert set(got) == expected  # never A itself, D (other group) or E
    assert got[vms["B"]][0]["host"] == HOST_A and got[vms["C"]][0]["host"] == HOST_B
    for items in got.values():
        assert len(items) == 1
        assert items[0]["fields"] == {
            "source_instance": vms["A"],
            "data": {"role": "active", "epoch": 3},
        }
    # One cast per compute host for one broadcast.
    assert all(len(c.casts) == 1 for c in env["computes"].values())


def test_broadcast_reaches_exactly_the_peers_on_two_hosts(env) -> None:
    """Seeded rows: servers and server groups on two hosts (``env``): the compute
    hosts are recording RPC servers, and the real Nova here has one; the real
    flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    check_broadcast(env)


def test_status_returns_every_member_then_done(env) -> None:
    """Seeded rows: servers and server groups on two hosts (``env``): the compute
    hosts are recording RPC servers, and the real Nova here has one; the real
    flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    vms = env["vms"]
    clear(env)
    relay(env, HOST_B, "C", "status_query", {"seq": 41})
    wait_until(lambda: env["computes"][HOST_B].items("status_response_done"), 10)
    items = env["computes"][HOST_B].items()
    assert env["computes"][HOST_A].items() == []
    assert len(env["computes"][HOST_B].casts) == 1  # all in one cast
    assert all(i["instance_uuid"] == vms["C"] for i in items)
    assert [i["msg_type"] for i in items] == ["status_response"] * 3 + ["status_response_done"]
    statuses = {i["fields"]["data"]["uuid"]: i["fields"]["data"] for i in items[:3]}
    assert set(statuses) == {vms["A"], vms["B"], vms["C"]}
    assert all(i["fields"]["seq"] == 41 for i in items)
    # Straight from the Nova API: names, hosts, Nova state names.
    assert statuses[vms["A"]]["display_name"] == "vnf-a"
    assert statuses[vms["C"]]["host"] == HOST_B
    assert statuses[vms["A"]]["state"] == "active"
    assert statuses[vms["A"]]["power_state"] == "running"
    assert statuses[vms["A"]]["task_state"] is None


def test_vm_in_no_group_gets_a_nack(env) -> None:
    """Seeded rows: servers and server groups on two hosts (``env``): the compute
    hosts are recording RPC servers, and the real Nova here has one; the real
    flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    vms = env["vms"]
    clear(env)
    relay(env, HOST_A, "E", "broadcast", {"data": "anyone?"})
    wait_until(lambda: env["computes"][HOST_A].items("nack"), 10)
    assert env["computes"][HOST_A].items() == [
        {
            "instance_uuid": vms["E"],
            "msg_type": "nack",
            "fields": {
                "orig_msg_type": "broadcast",
                "log_msg": "not_in_server_group: this VM is in no server group",
            },
        }
    ]
    assert env["computes"][HOST_B].items() == []


def test_versioned_notification_of_a_peer_reaches_the_other_members(env) -> None:
    """Seeded rows: servers and server groups on two hosts (``env``): the compute
    hosts are recording RPC servers, and the real Nova here has one; the real
    flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    vms = env["vms"]
    clear(env)
    env["nova"].publish(
        HOST_B,
        "instance.power_off.end",
        instance_action_payload(
            vms["C"], "vnf-c", HOST_B, state="stopped", power_state="shutdown", task_state=None
        ),
    )
    got = wait_until(
        lambda: len(delivered_to(env, "notification")) >= 2 and delivered_to(env, ""), 10
    )
    assert set(got) == {vms["A"], vms["B"]}  # the other members only: not C, not D
    for items in got.values():
        data = items[0]["fields"]["data"]
        assert data["uuid"] == vms["C"] and data["display_name"] == "vnf-c"
        assert (data["state"], data["task_state"], data["power_state"]) == (
            "stopped",
            None,
            "shutdown",
        )
        assert data["host"] == HOST_B
    # A status query now answers the new state too.
    clear(env)
    relay(env, HOST_A, "A", "status_query", {"seq": 2})
    wait_until(lambda: env["computes"][HOST_A].items("status_response_done"), 10)
    states = {
        i["fields"]["data"]["uuid"]: i["fields"]["data"]["state"]
        for i in env["computes"][HOST_A].items("status_response")
    }
    assert states[vms["C"]] == "stopped"
    # A notification about D (group db, alone) reaches nobody in web.
    clear(env)
    env["nova"].publish(
        HOST_B,
        "instance.pause.end",
        instance_action_payload(vms["D"], "db-d", HOST_B, state="paused", power_state="paused"),
    )
    env["nova"].publish(
        HOST_B,
        "instance.power_on.end",
        instance_action_payload(vms["C"], "vnf-c", HOST_B),
    )
    wait_until(lambda: len(delivered_to(env, "notification")) >= 2, 10)
    for items in delivered_to(env, "notification").values():
        assert [i["fields"]["data"]["uuid"] for i in items] == [vms["C"]]


def test_new_member_from_server_group_add_member(env, cloud) -> None:
    """A server joins ``web`` in Nova; Nova's ``server_group.add_member``
    notification makes the controller look it up in the Nova API.

    Seeded rows: servers and server groups on two hosts (``env``): the compute
    hosts are recording RPC servers, and the real Nova here has one; the real
    flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    vms = env["vms"]
    new = str(uuidlib.uuid4())
    cloud.create_server(new, "vnf-f", "sg.small", HOST_B, server_group=vms["web"])
    vms["F"] = new
    clear(env)
    env["nova"].publish(
        HOST_B,
        "server_group.add_member",
        server_group_payload(vms["web"], "web", [vms["A"], vms["B"], vms["C"], new]),
    )
    # The others are told about their new peer, once its state is known.
    got = wait_until(
        lambda: len(delivered_to(env, "notification")) >= 3 and delivered_to(env, ""), 15
    )
    assert set(got) == {vms["A"], vms["B"], vms["C"]}
    assert got[vms["A"]][0]["fields"]["data"]["uuid"] == new
    clear(env)
    relay(env, HOST_A, "A", "broadcast", {"data": 1})
    wait_until(lambda: len(delivered_to(env, "broadcast")) >= 3, 10)
    assert set(delivered_to(env, "broadcast")) == {vms["B"], vms["C"], new}
    # Nova says F was deleted (simulated: F stays in Nova's database).
    clear(env)
    env["nova"].publish(
        HOST_B,
        "instance.delete.end",
        instance_action_payload(new, "vnf-f", HOST_B, state="deleted", power_state="pending"),
    )
    wait_until(lambda: len(delivered_to(env, "notification")) >= 3, 10)
    clear(env)
    relay(env, HOST_A, "A", "broadcast", {"data": 2})
    wait_until(lambda: len(delivered_to(env, "broadcast")) >= 2, 10)
    assert set(delivered_to(env, "broadcast")) == {vms["B"], vms["C"]}


def test_controller_restart_rebuilds_membership_from_nova(env, cloud) -> None:
    """Stop the controller, change membership in Nova while it is down (no
    notification reaches anyone), start a new one: it routes by Nova's truth.
    (F's deletion earlier was only a simulated notification: Nova still has F
    in ``web``, so the rebuilt membership has it again.)

    Seeded rows: servers and server groups on two hosts (``env``): the compute
    hosts are recording RPC servers, and the real Nova here has one; the real
    flow on one host is ``tests/e2e/nova/test_nova_server_groups.py``."""
    vms = env["vms"]
    env["controller"].stop()
    late = str(uuidlib.uuid4())
    cloud.create_server(late, "db-late", "sg.small", HOST_A, server_group=vms["db"])
    env["controller"] = Controller(env["workdir"], env["transport"])
    assert env["controller"].router.membership.loaded
    check_broadcast(env, vms["F"])
    clear(env)
    relay(env, HOST_B, "D", "broadcast", {"data": "db"})
    wait_until(lambda: delivered_to(env, "broadcast"), 10)
    got = delivered_to(env, "broadcast")
    assert set(got) == {late} and got[late][0]["host"] == HOST_A
    clear(env)
    relay(env, HOST_A, "E", "status_query", {"seq": 1})
    wait_until(lambda: env["computes"][HOST_A].items("nack"), 10)
    snap = env["controller"].service.status()["server_groups"]
    assert snap["mode"] == "nova" and snap["refreshes"] >= 1 and snap["refresh_errors"] == 0
