"""guest_ha.messaging against a real, private RabbitMQ node (guest_ha_dev.testing.rabbitmq).

One node serves the module; the broker-outage test stops and restarts it and
runs last.  Nothing here is a stand-in: real rabbitmq-server 3.10, real
oslo.messaging rabbit driver, threading executor.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List

import pytest

pytest.importorskip("oslo_messaging")

import oslo_messaging

from guest_ha.messaging import (
    ComputeClient,
    ControllerClient,
    MessagingError,
    RpcTimeout,
    TransportUnavailable,
    configure,
    get_notification_transport,
    get_transport,
    notifier,
    publish,
    serve_compute,
    serve_controller,
    stop_server,
)
from guest_ha_dev.testing.rabbitmq import (
    RabbitMQNode,
    pick_free_ports,
    rabbitmq_installed,
)

pytestmark = pytest.mark.integration

if not rabbitmq_installed() and os.geteuid() != 0:
    pytest.skip("rabbitmq-server not installed and not root to install it", allow_module_level=True)


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        time.sleep(0.02)


class Controller:
    def __init__(self, name: str) -> None:
        self.name = name
        self.events: List[Dict[str, Any]] = []
        self.ctxts: List[Dict[str, Any]] = []
        self.lock = threading.Lock()

    def report_event(self, ctxt: Dict[str, Any], event: Dict[str, Any]) -> Dict[str, Any]:
        with self.lock:
            self.events.append(event)
            self.ctxts.append(ctxt)
        return {
            "ack": event["idempotency_key"],
            "controller": self.name,
            "thread": threading.current_thread().name,
        }

    def echo(self, ctxt: Dict[str, Any], value: Any) -> Any:
        return value


class Compute:
    def __init__(self, host: str) -> None:
        self.host = host
        self.received: List[Any] = []

    def ping(self, ctxt: Dict[str, Any], n: int) -> None:
        self.received.append(("ping", n, ctxt.get("host")))

    def whoami(self, ctxt: Dict[str, Any]) -> str:
        return self.host


@pytest.fixture(scope="module")
def node() -> Iterator[RabbitMQNode]:
    with RabbitMQNode() as rabbit:
        configure(rabbit.url)
        yield rabbit


@pytest.fixture
def transport(node: RabbitMQNode) -> Iterator[oslo_messaging.Transport]:
    t = get_transport(node.url)
    yield t
    t.cleanup()


@pytest.fixture
def servers() -> Iterator[List[oslo_messaging.MessageHandlingServer]]:
    started: List[oslo_messaging.MessageHandlingServer] = []
    yield started
    for server in started:
        stop_server(server)


def event(**extra: Any) -> Dict[str, Any]:
    return {
        "idempotency_key": str(uuid.uuid4()),
        "kind": "heartbeat_lost",
        "instance_uuid": str(uuid.uuid4()),
        **extra,
    }


def test_report_round_trip_returns_ack(transport, servers) -> None:
    ctl = Controller("c1")
    servers.append(serve_controller(transport, [ctl], host="ctl-rt"))
    assert servers[0].executor_type == "threading"
    client = ControllerClient(transport, host="compute-rt")
    ev = event(host="compute-rt")
    ack = client.report(ev, timeout=10)
    assert ack["ack"] == ev["idempotency_key"] and ack["controller"] == "c1"
    assert ack["thread"] != threading.current_thread().name
    assert ctl.events == [ev]
    assert [c["host"] for c in ctl.ctxts] == ["compute-rt"]
    assert client.call("echo", timeout=5, value=[1, "two"]) == [1, "two"]
    t0 = time.monotonic()
    for _ in range(20):
        client.report(event(), timeout=5)
    print(f"report latency after warm-up: {(time.monotonic() - t0) / 20 * 1000:.1f} ms")


def test_two_controllers_share_calls_each_handled_once(transport, servers) -> None:
    a, b = Controller("a"), Controller("b")
    servers.append(serve_controller(transport, [a], host="ctl-a"))
    servers.append(serve_controller(transport, [b], host="ctl-b"))
    client = ControllerClient(transport, host="compute-1")
    sent = [event() for _ in range(40)]
    acks = [client.report(ev, timeout=10) for ev in sent]
    assert [ack["ack"] for ack in acks] == [ev["idempotency_key"] for ev in sent]
    keys_a = [ev["idempotency_key"] for ev in a.events]
    keys_b = [ev["idempotency_key"] for ev in b.events]
    assert keys_a and keys_b, (len(keys_a), len(keys_b))
    assert sorted(keys_a + keys_b) == sorted(ev["idempotency_key"] for ev in sent)
    # A specific controller can still be addressed.
    assert (
        client.call_server("ctl-b", "report_event", timeout=5, event=event())["controller"] == "b"
    )


def test_cast_to_host_reaches_only_that_host_and_fanout_reaches_all(transport, servers) -> None:
    hosts = {name: Compute(name) for name in ("cmp-a", "cmp-b", "cmp-c")}
    for name, endpoint in hosts.items():
        servers.append(serve_compute(transport, [endpoint], host=name))
    client = ComputeClient(transport, host="ctl-x")
    assert client.topic_for("cmp-b") == "guest_ha_compute.cmp-b"
    client.cast_to_host("cmp-b", "ping", n=1)
    client.cast_to_host("cmp-b", "ping", n=2)
    wait_for(lambda: len(hosts["cmp-b"].received) == 2, what="casts to cmp-b")
    assert client.call_host("cmp-c", "whoami", timeout=5) == "cmp-c"
    time.sleep(0.3)
    assert hosts["cmp-b"].received == [("ping", 1, "ctl-x"), ("ping", 2, "ctl-x")]
    assert hosts["cmp-a"].received == [] and hosts["cmp-c"].received == []

    client.fanout("ping", n=3)
    wait_for(
        lambda: all(("ping", 3, "ctl-x") in c.received for c in hosts.values()),
        what="fanout on every host",
    )
    time.sleep(0.3)
    assert [c.received.count(("ping", 3, "ctl-x")) for c in hosts.values()] == [1, 1, 1]


class NotificationSink:
    def __init__(self) -> None:
        self.got: List[Dict[str, Any]] = []

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        self.got.append(
            {"publisher_id": publisher_id, "event_type": event_type, "payload": payload}
        )

    warn = error = info


def test_notifier_publishes_and_listener_receives(node: RabbitMQNode) -> None:
    listen_transport = get_notification_transport(node.url)
    sink = NotificationSink()
    listener = oslo_messaging.get_notification_listener(
        listen_transport,
        [oslo_messaging.Target(topic="guest_ha_test_notifications")],
        [sink],
        pool="guest-ha-test-listener",
    )
    listener.start()
    sender = notifier(node.url, "guest-ha-controller.ctl-1", ["guest_ha_test_notifications"])
    try:
        assert listener.executor_type == "threading"
        payload = {
            "instance_uuid": str(uuid.uuid4()),
            "host": "compute-1",
            "idempotency_key": str(uuid.uuid4()),
        }
        publish(sender, "guest_ha.instance.heartbeat_lost", payload, priority="error")
        wait_for(lambda: sink.got, what="notification")
        assert sink.got == [
            {
                "publisher_id": "guest-ha-controller.ctl-1",
                "event_type": "guest_ha.instance.heartbeat_lost",
                "payload": payload,
            }
        ]
    finally:
        stop_server(listener)
        sender.transport.cleanup()
        listen_transport.cleanup()


def test_broker_unreachable_at_first_call_fails_fast() -> None:
    """A transport whose broker was never up: the first call must not hang in
    oslo.messaging's reply-queue set-up (which retries forever)."""
    url = f"rabbit://guest:guest@127.0.0.1:{pick_free_ports(1)[0]}/"
    t = get_transport(url)
    try:
        client = ControllerClient(t, host="compute-cold")
        for _ in range(2):
            t0 = time.monotonic()
            with pytest.raises(TransportUnavailable):
                client.report(event(), timeout=2)
            assert time.monotonic() - t0 < 30
    finally:
        t.cleanup()


def test_broker_stopped_then_restarted(node: RabbitMQNode, transport, servers) -> None:
    """Runs last: stops the module's node and starts it again (same port, same data)."""
    ctl = Controller("c1")
    servers.append(serve_controller(transport, [ctl], host="ctl-outage"))
    client_transport = get_transport(node.url)
    try:
        client = ControllerClient(client_transport, host="compute-outage")
        compute = ComputeClient(client_transport, host="ctl-outage")
        sender = notifier(
            node.url, "guest-ha-controller.ctl-outage", ["guest_ha_test_notifications"]
        )
        client.report(event(), timeout=5)
        publish(sender, "guest_ha.instance.heartbeat_lost", {"n": 0})

        node.stop()
        timings = {}
        for name, action in (
            ("report", lambda: client.report(event(), timeout=3)),
            ("cast_to_host", lambda: compute.cast_to_host("cmp-a", "ping", n=1)),
            ("fanout", lambda: compute.fanout("ping", n=1)),
            ("publish", lambda: publish(sender, "guest_ha.instance.unhealthy", {"n": 1})),
        ):
            t0 = time.monotonic()
            with pytest.raises((TransportUnavailable, RpcTimeout)) as info:
                action()
            timings[name] = (round(time.monotonic() - t0, 2), type(info.value).__name__)
            assert timings[name][0] < 30, (name, timings[name])
        print(f"with the broker stopped: {timings}")

        node.start()
        t0 = time.monotonic()
        errors: List[str] = []
        while True:
            try:
                ack = client.report(event(recovery=True), timeout=2)
                break
            except MessagingError as exc:
                errors.append(type(exc).__name__)
                assert time.monotonic() - t0 < 60, errors
        print(
            f"first report after restart ok after {time.monotonic() - t0:.1f} s "
            f"(failures before: {errors})"
        )
        assert ack["controller"] == "c1"
        compute.fanout("ping", n=2)  # sending works again too
        publish(sender, "guest_ha.instance.recovered", {"n": 2})
        sender.transport.cleanup()
    finally:
        client_transport.cleanup()


def test_broker_killed_then_started(node: RabbitMQNode, transport, servers) -> None:
    """SIGKILL (no clean shutdown, connections just drop), then a start on the
    same data folder and port: the same server and client objects carry on."""
    ctl = Controller("c-kill")
    servers.append(serve_controller(transport, [ctl], host="ctl-kill"))
    client = ControllerClient(transport, host="compute-kill")
    client.report(event(), timeout=5)
    old_pid = node.pid
    node.kill()
    assert node.pid is None
    t0 = time.monotonic()
    with pytest.raises((TransportUnavailable, RpcTimeout)):
        client.report(event(), timeout=3)
    assert time.monotonic() - t0 < 30
    node.start()
    assert node.pid not in (None, old_pid)
    deadline = time.monotonic() + 60
    while True:
        try:
            assert client.report(event(), timeout=2)["controller"] == "c-kill"
            break
        except MessagingError:
            assert time.monotonic() < deadline
