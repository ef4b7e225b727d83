"""The compute agent's half of server group messaging, over a real RabbitMQ node:
a guest's broadcast/status_query is relayed to the controllers' datagram queue
stamped with the VM's identity from its channel, and deliveries sent to the
compute host (as datagrams, and as RPC casts) reach the right guest. The
controller here records what reaches the real controller queue and topic (the
routing itself is tested with the controller)."""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, List

import pytest

pytest.importorskip("oslo_messaging")

from guest_ha.messaging import options
from guest_ha.messaging.datagrams import Datagrams
from guest_ha.messaging.payloads import SG_DELIVER, SG_RELAY, SG_RELAY_BATCH
from guest_ha.messaging.rpc import (
    ComputeClient,
    get_transport,
    serve_controller,
    stop_server,
)
from guest_ha.protocol import GUEST_TO_HOST, SERVER_GROUP, encode_frame, make
from guest_ha_dev.sim import VmSimulator
from guest_ha_dev.sim.harness import EngineProcess, wait_until
from guest_ha_dev.testing.rabbitmq import RabbitMQNode

pytestmark = pytest.mark.integration


class RecordingController:
    def __init__(self) -> None:
        self.relayed: List[Dict[str, Any]] = []
        self.lock = threading.Lock()

    def sg_relay(self, ctxt, **kwargs) -> None:
        with self.lock:
            self.relayed.append(kwargs)

    def sg_relay_batch(self, ctxt, host, items) -> None:
        with self.lock:
            self.relayed.extend({"host": host, **item} for item in items)

    def report_events(self, ctxt, events) -> Dict[str, Any]:
        return {"accepted": True, "keys": [e["idempotency_key"] for e in events]}

    def compute_status(self, ctxt, **kwargs) -> Dict[str, Any]:
        return {"ok": True}


@pytest.fixture(scope="module")
def rabbit():
    with RabbitMQNode() as node:
        yield node


def received(sim: VmSimulator, uuid: str, msg_type: str) -> List[Dict[str, Any]]:
    return [m for m in sim.stats(uuid)[uuid]["server_group_received"] if m["msg_type"] == msg_type]


def test_relay_and_delivery(rabbit, short_tmp) -> None:
    options.configure(rabbit.url)
    transport = get_transport(rabbit.url)
    controller = RecordingController()
    server = serve_controller(transport, [controller], "ctl-test")
    # Relays come as datagrams ([guest_ha] server_group_transport's default).
    datagrams = Datagrams(options.configure())
    relays = datagrams.receiver(
        datagrams.controller_queue, controller, [SG_RELAY, SG_RELAY_BATCH], name="dg-ctl"
    ).start()
    assert relays.consuming.wait(15)
    try:
        with VmSimulator(os.path.join(short_tmp, "vms")) as sim:
            a = sim.add_vm(interval_ms=200)
            b = sim.add_vm(interval_ms=200)
            loner = sim.add_vm(interval_ms=200)
            vms = [
                {"uuid": a.uuid, "name": a.name, "socket": a.socket_path, "server_group": "web"},
                {"uuid": b.uuid, "name": b.name, "socket": b.socket_path, "server_group": "web"},
                {"uuid": loner.uuid, "name": loner.name, "socket": loner.socket_path},
            ]
            engine = EngineProcess(
                os.path.join(short_tmp, "compute"),
                extra={
                    "vms": vms,
                    "controller": {
                        "enabled": True,
                        "transport_url": rabbit.url,
                        "messaging_config": None,
                        "spool_dir": os.path.join(short_tmp, "spool"),
                        "host": "compute-a",
                    },
                },
            ).start()
            try:
                for vm in (a, b, loner):
                    engine.wait_event("registered", vm.uuid, timeout=15)
                sim.send_message(
                    a.uuid, make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data={"hello": 1})
                )
                sim.send_message(a.uuid, make(SERVER_GROUP, "status_query", GUEST_TO_HOST, seq=7))
                wait_until(lambda: len(controller.relayed) >= 2, 15)
                relayed = {r["msg_type"]: r for r in controller.relayed}
                assert relayed["broadcast"] == {
                    "host": "compute-a",
                    "instance_uuid": a.uuid,
                    "msg_type": "broadcast",
                    "fields": {"data": {"hello": 1}},
                    "group": "web",
                }
                assert relayed["status_query"]["fields"] == {"seq": 7}
                # A guest cannot choose who it is: source_instance is refused, not relayed.
                spoof = (
                    b'{"version":1,"source_addr":"server_group","dest_addr":"server_group",'
                    b'"data":{"msg_type":"broadcast","source_instance":"'
                    + b.uuid.encode()
                    + b'","data":"x"}}'
                )
                sim.inject(a.uuid, encode_frame(spoof))
                big = (
                    b'{"version":1,"source_addr":"server_group","dest_addr":"server_group",'
                    b'"data":{"msg_type":"broadcast","data":"' + b"x" * 3100 + b'"}}'
                )
                sim.inject(a.uuid, encode_frame(big))
                wait_until(lambda: len(received(sim, a.uuid, "nack")) >= 2, 10)
                nacks = received(sim, a.uuid, "nack")
                assert any("source_instance" in n["log_msg"] for n in nacks)
                assert any("3050" in n["log_msg"] for n in nacks)
                # A VM that did not opt in to messaging is refused.
                sim.send_message(
                    loner.uuid, make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data="x")
                )
                wait_until(lambda: received(sim, loner.uuid, "nack"), 10)
                assert received(sim, loner.uuid, "nack")[0]["log_msg"].startswith("not_enabled")
                assert len(controller.relayed) == 2
                # Controller -> compute: deliveries reach the named guest only,
                # as datagrams (the default) and as RPC casts (still served).
                deliveries = [
                    {
                        "instance_uuid": b.uuid,
                        "msg_type": "broadcast",
                        "fields": {"source_instance": a.uuid, "data": {"hello": 1}},
                    },
                    {
                        "instance_uuid": loner.uuid,
                        "msg_type": "broadcast",
                        "fields": {"source_instance": a.uuid, "data": "not for you"},
                    },
                ]
                sender = datagrams.sender()
                try:
                    # The agent declares its queue once it serves: until then the
                    # broker drops datagrams, so send until one arrives.
                    def datagram_arrived() -> bool:
                        sender.send(
                            datagrams.compute_queue("compute-a"),
                            SG_DELIVER,
                            {"deliveries": deliveries},
                        )
                        return bool(received(sim, b.uuid, "broadcast"))

                    wait_until(datagram_arrived, 15, interval=0.5)
                finally:
                    sender.close()
                assert received(sim, b.uuid, "broadcast")[0]["source_instance"] == a.uuid
                before = len(received(sim, b.uuid, "broadcast"))
                ComputeClient(transport, "ctl-test").cast_to_host(
                    "compute-a", SG_DELIVER, deliveries=deliveries
                )
                wait_until(lambda: len(received(sim, b.uuid, "broadcast")) > before, 10)
                assert received(sim, loner.uuid, "broadcast") == []
                assert received(sim, a.uuid, "broadcast") == []
                assert engine.faults() == []
            finally:
                engine.stop()
    finally:
        relays.stop()
        stop_server(server)
        transport.cleanup()
