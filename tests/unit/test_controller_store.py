from __future__ import annotations

import threading
from typing import Any, Dict, List

import pytest

from guest_ha.controller.dispatcher import Dispatcher
from guest_ha.controller.reporters import ReporterError, http_error
from guest_ha.controller.store import EventStore
from guest_ha_dev.sim.harness import wait_until

pytestmark = pytest.mark.unit


def event(key: str, uuid: str = "u1", kind: str = "heartbeat_lost", fault: bool = True) -> dict:
    return {"idempotency_key": key, "instance_uuid": uuid, "kind": kind, "fault": fault}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_accept_is_idempotent(tmp_path) -> None:
    store = EventStore(str(tmp_path / "db.sqlite"))
    assert store.accept(event("k1"), ["log", "nova"], "compute-1") is True
    assert store.accept(event("k1"), ["log", "nova"], "compute-1") is False
    assert store.stats()["deliveries"] == {"pending": 2}
    assert store.stats()["faults_by_kind"] == {"heartbeat_lost": 1}


def test_per_instance_order_and_leases_across_processes(tmp_path) -> None:
    clock = Clock()
    path = str(tmp_path / "db.sqlite")
    a = EventStore(path, clock=clock)
    b = EventStore(path, clock=clock)  # a second controller on the same database
    a.accept(event("lost", "u1"), ["log"], "c1")
    a.accept(event("rec", "u1", "recovered", False), ["log"], "c1")
    a.accept(event("other", "u2"), ["log"], "c1")
    first = a.claim("ctl-a", lease_s=30, limit=10)
    assert [d.key for d in first] == ["lost", "other"]  # "rec" waits for "lost"
    assert b.claim("ctl-b", lease_s=30, limit=10) == []  # leased by ctl-a
    a.complete(first[0])
    second = b.claim("ctl-b", lease_s=30, limit=10)
    assert [d.key for d in second] == ["rec"]
    b.complete(second[0])
    clock.t += 31  # ctl-a died holding "other": its lease expires
    assert [d.key for d in b.claim("ctl-b", lease_s=30, limit=10)] == ["other"]


def test_retry_backoff_and_give_up(tmp_path) -> None:
    clock = Clock()
    store = EventStore(str(tmp_path / "db.sqlite"), clock=clock)
    store.accept(event("k"), ["nova"], "c1")
    (d,) = store.claim("x", 30)
    store.retry(d, "HTTP 503", delay_s=5)
    assert store.claim("x", 30) == []
    clock.t += 5
    (d,) = store.claim("x", 30)
    assert d.attempts == 1
    store.give_up(d, "HTTP 404")
    assert store.stats()["deliveries"] == {"failed": 1}


def test_http_error_classification() -> None:
    assert http_error(503, "x").retryable and http_error(429, "x").retryable
    assert not http_error(404, "x").retryable and not http_error(400, "x").retryable


class Recorder:
    def __init__(self, name: str, failures: int = 0, retryable: bool = True) -> None:
        self.name = name
        self.failures = failures
        self.retryable = retryable
        self.seen: List[Dict[str, Any]] = []
        self.lock = threading.Lock()

    def report(self, ev: Dict[str, Any]) -> None:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise ReporterError("down", retryable=self.retryable)
            self.seen.append(ev)


def wait_for(predicate, timeout: float = 10.0) -> None:
    wait_until(predicate, timeout, interval=0.01)


def test_dispatcher_delivers_each_event_to_each_reporter_once_in_order(tmp_path) -> None:
    store = EventStore(str(tmp_path / "db.sqlite"))
    log, flaky = Recorder("log"), Recorder("nova", failures=3)
    dispatcher = Dispatcher(store, {"log": log, "nova": flaky}, "ctl", backoff_initial_s=0.01)
    dispatcher.start()
    try:
        for i in range(20):
            kind, fault = ("heartbeat_lost", True) if i % 2 == 0 else ("recovered", False)
            store.accept(event(f"k{i}", "u1", kind, fault), ["log", "nova"], "c1")
            dispatcher.wake()
        wait_for(lambda: len(log.seen) == 20 and len(flaky.seen) == 20)
    finally:
        dispatcher.stop()
    for rec in (log, flaky):
        assert [e["idempotency_key"] for e in rec.seen] == [f"k{i}" for i in range(20)]
    assert dispatcher.snapshot()["nova"]["errors"] == 3
    assert store.stats()["deliveries"] == {"done": 40}


def test_permanent_failure_is_recorded_not_retried(tmp_path) -> None:
    store = EventStore(str(tmp_path / "db.sqlite"))
    broken = Recorder("nova", failures=1, retryable=False)
    dispatcher = Dispatcher(store, {"nova": broken}, "ctl")
    dispatcher.start()
    try:
        store.accept(event("k"), ["nova"], "c1")
        dispatcher.wake()
        wait_for(lambda: store.stats()["deliveries"] == {"failed": 1})
    finally:
        dispatcher.stop()
    assert broken.seen == []


def test_active_faults_are_the_instances_whose_last_fault_or_recovery_is_a_fault(tmp_path) -> None:
    store = EventStore(str(tmp_path / "db.sqlite"))
    assert store.active_faults() == []
    store.accept(event("u1-lost", "u1"), ["log"], "c1")
    store.accept(event("u2-lost", "u2"), ["log"], "c1")
    store.accept(event("u2-rec", "u2", "recovered", False), ["log"], "c1")
    store.accept(event("u3-lost", "u3"), ["log"], "c1")
    store.accept(event("u3-rec", "u3", "recovered", False), ["log"], "c1")
    store.accept(event("u3-crash", "u3", "vm_crashed"), ["log"], "c1")
    # Neither a fault nor a recovery: leaves u1's fault active.
    store.accept(event("u1-reg", "u1", "registered", False), ["log"], "c1")
    active = store.active_faults()
    assert [(e["instance_uuid"], e["kind"]) for e in active] == [
        ("u1", "heartbeat_lost"),
        ("u3", "vm_crashed"),
    ]
