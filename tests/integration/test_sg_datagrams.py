"""Server-group datagrams (``guest_ha.messaging.datagrams``) on a real RabbitMQ node
with one broker user per compute host, into a real ``guest-ha-controller``
process with ``[report_origin] mode = membership``: relays from a compute host
reach the peers on the other host; a host cannot relay for another host's VM,
a forged ``user_id`` is refused by the broker, malformed datagrams are
dropped without stopping the controller's receiver, the transport recovers
from a broker restart, and a busy receiver keeps its connection."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid as uuidlib
from typing import Any, Dict, Iterator, List

import pytest

pytest.importorskip("oslo_messaging")

import amqp
import amqp.exceptions

from guest_ha.messaging import options
from guest_ha.messaging.datagrams import (
    MAX_BODY_BYTES,
    DatagramReceiver,
    Datagrams,
    DatagramSender,
)
from guest_ha.messaging.payloads import SG_DELIVER, SG_RELAY_BATCH
from guest_ha.messaging.rpc import ControllerClient, get_transport
from guest_ha_dev.sim.harness import wait_until
from guest_ha_dev.testing.controller import ControllerProcess
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.integration

PREFIX = "guest-ha-compute-"
HOSTS = ("compute-a", "compute-b")


class RecordingCompute:
    """What a compute agent's datagram receiver hands its endpoint."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.deliveries: List[Dict[str, Any]] = []
        self.senders: List[Any] = []

    def sg_deliver(self, ctxt: Dict[str, Any], deliveries: List[Dict[str, Any]]) -> None:
        with self.lock:
            self.deliveries.extend(deliveries)
            self.senders.append(ctxt)

    def data(self) -> List[Any]:
        with self.lock:
            return [d["fields"].get("data") for d in self.deliveries]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[Dict[str, Any]]:
    workdir = str(tmp_path_factory.mktemp("sgdg"))
    groups_file = os.path.join(workdir, "groups.yaml")
    with open(groups_file, "w", encoding="utf-8") as fh:
        fh.write("groups: {}\n")  # membership from the hosts' vm_states
    vms = {h: str(uuidlib.uuid4()) for h in HOSTS}
    with RabbitMQNode() as rabbit:
        urls = {h: rabbit.add_user(PREFIX + h, f"pw-{h}-{uuidlib.uuid4().hex[:8]}") for h in HOSTS}
        ctl_url = rabbit.add_user("guest-ha-controller", "pw-ctl")
        conf = options.configure(rabbit.url)
        with ControllerProcess(
            workdir,
            ctl_url,
            host="ctl-dg",
            extra={
                "report_origin": {"mode": "membership", "compute_user_prefix": PREFIX},
                "server_groups": {
                    "enabled": "true",
                    "membership": "file",
                    "groups_file": groups_file,
                    "listen_notifications": "false",
                },
            },
        ) as controller:
            computes = {h: RecordingCompute() for h in HOSTS}
            receivers = []
            transports = []
            for h in HOSTS:
                datagrams = Datagrams(conf, urls[h])
                receivers.append(
                    datagrams.receiver(
                        datagrams.compute_queue(h), computes[h], [SG_DELIVER], name=f"dg-{h}"
                    ).start()
                )
                transport = get_transport(urls[h])
                transports.append(transport)
                ControllerClient(transport, h).call(
                    "vm_states",
                    host=h,
                    full=True,
                    vms=[
                        {
                            "uuid": vms[h],
                            "name": f"vm-{h}",
                            "state": "active",
                            "power_state": "running",
                            "group": "g1",
                        }
                    ],
                )
            for receiver in receivers:
                assert receiver.consuming.wait(15)
            wait_until(lambda: controller.status()["server_groups"]["known_instances"] >= 2, 30)
            senders = {h: Datagrams(conf, urls[h]).sender() for h in HOSTS}
            try:
                yield {
                    "rabbit": rabbit,
                    "urls": urls,
                    "conf": conf,
                    "controller": controller,
                    "computes": computes,
                    "senders": senders,
                    "vms": vms,
                    "queue": Datagrams(conf).controller_queue,
                }
            finally:
                for sender in senders.values():
                    sender.close()
                for receiver in receivers:
                    receiver.stop()
                for transport in transports:
                    transport.cleanup()


def relay(world: Dict[str, Any], sender_host: str, claimed_host: str, vm_host: str, data: Any):
    world["senders"][sender_host].send(
        world["queue"],
        SG_RELAY_BATCH,
        {
            "host": claimed_host,
            "items": [
                {
                    "instance_uuid": world["vms"][vm_host],
                    "msg_type": "broadcast",
                    "fields": {"data": data},
                    "group": "g1",
                }
            ],
        },
    )


def rejected_metric(ctl: ControllerProcess, reason: str) -> int:
    for line in ctl.metrics().splitlines():
        if line.startswith(f'guest_ha_reports_rejected_total{{reason="{reason}"}}'):
            return int(line.split()[-1])
    raise AssertionError(f"no rejected metric for {reason}")


def test_relay_reaches_the_peer_on_the_other_host(world) -> None:
    relay(world, "compute-a", "compute-a", "compute-a", "hello b")
    b = world["computes"]["compute-b"]
    wait_until(lambda: "hello b" in b.data(), 15)
    delivery = next(d for d in b.deliveries if d["fields"].get("data") == "hello b")
    assert delivery["instance_uuid"] == world["vms"]["compute-b"]
    assert delivery["fields"]["source_instance"] == world["vms"]["compute-a"]
    # The controller's datagrams carry its broker user, validated by RabbitMQ.
    assert b.senders[-1] == {"guest_ha_broker_user": "guest-ha-controller"}
    assert "hello b" not in world["computes"]["compute-a"].data()


def test_a_host_cannot_relay_for_another_hosts_vm(world) -> None:
    a = world["computes"]["compute-a"]
    before = rejected_metric(world["controller"], "host_mismatch")
    # compute-a's connection claims to be compute-b, relaying b's VM to a's VM.
    relay(world, "compute-a", "compute-b", "compute-b", "spoofed by a")
    # compute-b's honest relay after it: the controller handles its queue in order.
    relay(world, "compute-b", "compute-b", "compute-b", "honest b")
    wait_until(lambda: "honest b" in a.data(), 15)
    assert "spoofed by a" not in a.data()
    assert rejected_metric(world["controller"], "host_mismatch") == before + 1


def test_broker_refuses_a_forged_user_id(world) -> None:
    """RabbitMQ's validated user-ID on the datagram exchange: a connection of
    compute-a cannot publish as compute-b (confirms on, to see the refusal)."""
    url = world["urls"]["compute-a"]
    userinfo, _, hostpart = url.split("://", 1)[1].rpartition("@")
    user, _, password = userinfo.partition(":")
    conn = amqp.Connection(
        host=hostpart.rstrip("/"), userid=user, password=password, confirm_publish=True
    )
    conn.connect()
    try:
        channel = conn.channel()
        body = json.dumps(
            {
                "method": SG_RELAY_BATCH,
                "args": {
                    "host": "compute-b",
                    "items": [
                        {
                            "instance_uuid": world["vms"]["compute-b"],
                            "msg_type": "broadcast",
                            "fields": {"data": "forged"},
                            "group": "g1",
                        }
                    ],
                },
            }
        )
        exchange = Datagrams(world["conf"]).exchange
        with pytest.raises(amqp.exceptions.PreconditionFailed, match="user_id"):
            channel.basic_publish(
                amqp.Message(body, user_id=PREFIX + "compute-b"),
                exchange=exchange,
                routing_key=world["queue"],
            )
    finally:
        conn.collect()
    relay(world, "compute-b", "compute-b", "compute-b", "after forged")
    wait_until(lambda: "after forged" in world["computes"]["compute-a"].data(), 15)
    assert "forged" not in world["computes"]["compute-a"].data()


def test_malformed_datagrams_are_dropped_and_the_receiver_goes_on(world) -> None:
    sender: DatagramSender = world["senders"]["compute-a"]
    link = sender._link
    assert link.open()
    for body in (
        b"{not json",
        b"[1, 2]",
        json.dumps({"method": "report_events", "args": {"events": []}}).encode(),
        json.dumps({"method": SG_RELAY_BATCH, "args": {"host": "compute-a", "bogus": 1}}).encode(),
        json.dumps(
            {"method": SG_RELAY_BATCH, "args": {"host": "compute-a", "items": "x"}}
        ).encode(),
        b"x" * (MAX_BODY_BYTES + 1),
    ):
        link.channel.basic_publish(
            amqp.Message(body, user_id=link.user),
            exchange=link.exchange,
            routing_key=world["queue"],
        )
    with pytest.raises(Exception, match="over"):
        sender.send(
            world["queue"], SG_RELAY_BATCH, {"host": "compute-a", "p": "x" * MAX_BODY_BYTES}
        )
    relay(world, "compute-a", "compute-a", "compute-a", "still served")
    wait_until(lambda: "still served" in world["computes"]["compute-b"].data(), 15)
    assert world["controller"].proc.poll() is None


def test_datagrams_flow_again_after_a_broker_restart(world) -> None:
    """Senders and receivers (the controller process's and the hosts') reconnect
    and declare their queues again; datagrams sent meanwhile may be lost."""
    world["rabbit"].restart()
    b = world["computes"]["compute-b"]
    sent = []

    def arrived() -> bool:
        data = f"after restart {len(sent)}"
        sent.append(data)
        try:
            relay(world, "compute-a", "compute-a", "compute-a", data)
        except Exception:  # DatagramError while the sender reconnects
            pass
        return any(d in b.data() for d in sent)

    wait_until(arrived, 90, interval=0.5)
    assert world["controller"].proc.poll() is None


def test_a_busy_receiver_keeps_its_connection(world) -> None:
    """A no_ack consumer sends the broker only heartbeats: they must go out while
    datagrams stream in, or RabbitMQ closes the connection (heartbeat 1 s here,
    so a few seconds of steady traffic would show it)."""
    got: List[str] = []
    datagrams = Datagrams(world["conf"], world["urls"]["compute-a"])
    queue = datagrams.compute_queue("busy-host")
    receiver = DatagramReceiver(
        datagrams.brokers,
        datagrams.exchange,
        queue,
        [SG_DELIVER],
        lambda method, args, user: got.append(method),
        heartbeat_s=1,
    ).start()
    sender = datagrams.sender()
    try:
        assert receiver.consuming.wait(15)
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            sender.send(queue, SG_DELIVER, {"deliveries": []})
            time.sleep(0.05)  # well under the receiver's 1 s drain timeout
        wait_until(lambda: len(got) >= sender.sent - 1, 10)
        assert receiver.connection_losses == 0
    finally:
        sender.close()
        receiver.stop()
