"""Server-group datagrams without a broker: addresses from the transport URL, and
what a receiver does with each incoming message (the broker round trip is in
tests/integration/test_sg_datagrams.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import pytest

pytest.importorskip("oslo_messaging")

from guest_ha.messaging import options
from guest_ha.messaging.datagrams import (
    MAX_BODY_BYTES,
    DatagramReceiver,
    Datagrams,
    broker_addresses,
    endpoint_handler,
)
from guest_ha.messaging.identity import BROKER_USER, sender_user

pytestmark = pytest.mark.unit


def test_addresses_follow_the_transport_url_in_failover_order() -> None:
    conf = options.configure()
    brokers = broker_addresses(conf, "rabbit://u1:p1@h1:5673,u2:p2@h2/vh")
    assert [(b.host, b.port, b.userid, b.password, b.vhost) for b in brokers] == [
        ("h1", 5673, "u1", "p1", "vh"),
        ("h2", 5672, "u2", "p2", "vh"),
    ]
    assert "p1" not in repr(brokers[0])


def test_a_non_rabbit_transport_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="RabbitMQ"):
        broker_addresses(options.configure(), "kafka://h1:9092/")


def test_names_come_from_the_topics() -> None:
    conf = options.configure()
    datagrams = Datagrams(conf, "rabbit://u:p@h:5672/")
    topic = conf.guest_ha.controller_topic
    assert datagrams.exchange == f"{topic}_datagrams"
    assert datagrams.controller_queue == f"{topic}.datagrams"
    assert datagrams.compute_queue("c1") == f"{conf.guest_ha.compute_topic_prefix}.datagrams.c1"


def _receiver(calls: List[Tuple[str, Dict[str, Any], Optional[str]]]) -> DatagramReceiver:
    brokers = broker_addresses(options.configure(), "rabbit://u:p@h:5672/")
    return DatagramReceiver(
        brokers,
        "x",
        "q",
        ["sg_deliver"],
        lambda method, args, user: calls.append((method, args, user)),
    )


def _message(body: bytes, user: Any = "guest-ha-controller") -> Any:
    properties = {} if user is None else {"user_id": user}
    return SimpleNamespace(body=body, properties=properties)


def test_receiver_hands_on_its_own_methods_with_the_broker_user() -> None:
    calls: List[Tuple[str, Dict[str, Any], Optional[str]]] = []
    receiver = _receiver(calls)
    body = json.dumps({"method": "sg_deliver", "args": {"deliveries": []}}).encode()
    receiver._on_message(_message(body))
    receiver._on_message(_message(body, user=b"ctl-bytes"))
    receiver._on_message(_message(body, user=None))
    assert calls == [
        ("sg_deliver", {"deliveries": []}, "guest-ha-controller"),
        ("sg_deliver", {"deliveries": []}, "ctl-bytes"),
        ("sg_deliver", {"deliveries": []}, None),
    ]
    assert receiver.dropped == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        json.dumps({"method": "report_events", "args": {}}).encode(),
        json.dumps({"method": "sg_deliver", "args": [1]}).encode(),
        json.dumps({"method": "sg_deliver"}).encode(),
        b" " * (MAX_BODY_BYTES + 1),
    ],
    ids=["json", "not-object", "foreign-method", "args-list", "no-args", "oversized"],
)
def test_receiver_drops_what_it_does_not_serve(body: bytes) -> None:
    calls: List[Tuple[str, Dict[str, Any], Optional[str]]] = []
    receiver = _receiver(calls)
    receiver._on_message(_message(body))
    assert calls == [] and receiver.dropped == 1


def test_a_failing_handler_is_counted_and_the_receiver_goes_on() -> None:
    brokers = broker_addresses(options.configure(), "rabbit://u:p@h:5672/")

    def handler(method: str, args: Dict[str, Any], user: Optional[str]) -> None:
        raise TypeError("unexpected keyword argument")

    receiver = DatagramReceiver(brokers, "x", "q", ["sg_deliver"], handler)
    body = json.dumps({"method": "sg_deliver", "args": {"bogus": 1}}).encode()
    receiver._on_message(_message(body))
    receiver._on_message(_message(body))
    assert receiver.dropped == 2 and receiver.received == 2


def test_endpoint_sees_only_the_broker_user_never_the_body() -> None:
    seen: List[Dict[str, Any]] = []

    class Endpoint:
        def sg_deliver(self, ctxt: Dict[str, Any], deliveries: Any) -> None:
            seen.append(ctxt)

    handle = endpoint_handler(Endpoint())
    handle("sg_deliver", {"deliveries": []}, "guest-ha-compute-a")
    handle("sg_deliver", {"deliveries": []}, None)
    assert sender_user(seen[0]) == "guest-ha-compute-a"
    assert seen[1] == {} and BROKER_USER not in seen[1]
    with pytest.raises(TypeError):  # a forged context key is just a bad argument
        handle("sg_deliver", {"deliveries": [], "ctxt": {BROKER_USER: "x"}}, None)
