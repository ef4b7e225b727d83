"""The active/standby example of docs/vnf-developer-guide.md (docs/examples/active_standby.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PATH = Path(__file__).resolve().parents[2] / "docs" / "examples" / "active_standby.py"
_spec = importlib.util.spec_from_file_location("active_standby_example", PATH)
assert _spec is not None and _spec.loader is not None
ex = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ex)

A = "00000000-0000-4000-8000-00000000000a"
B = "00000000-0000-4000-8000-00000000000b"


def m(uuid, state="active", power="running"):
    return {"uuid": uuid, "display_name": uuid[-1], "state": state, "power_state": power}


def lease(epoch):
    return {"app": ex.APP, "type": "lease", "epoch": epoch}


def test_standby_follows_a_live_active_and_takes_over_only_when_its_vm_is_down():
    b = ex.LeaseArbiter(0.0, period_s=0.5, misses=3, self_uuid=B)
    for i in range(10):
        b.on_broadcast(A, lease(4), i * 0.5)
        assert not b.wants_status(i * 0.5)
    assert (b.active_uuid, b.epoch) == (A, 4)
    # Leases stop at t=4.5. Not before 3 periods have passed:
    assert not b.wants_status(5.5)
    assert b.wants_status(6.1)
    # the active's VM still runs (a hung app, or lost broadcasts): stay standby
    assert b.decide([m(A), m(B)], 6.1) is False and b.role == "standby"
    assert not b.wants_status(6.2)  # next check one window later
    # Nova says it stopped: a notification makes the check immediate.
    b.on_notification(m(A, "stopped", "shutdown"), 6.3)
    assert b.wants_status(6.3)
    assert b.decide([m(A, "stopped", "shutdown"), m(B)], 6.3) is True
    assert (b.role, b.epoch) == ("active", 5)
    assert b.announcement() == lease(5)


def test_a_status_answer_without_the_active_counts_as_down():
    b = ex.LeaseArbiter(0.0, self_uuid=B)
    b.on_broadcast(A, lease(1), 0.0)
    assert b.decide([m(B)], 2.0) is True


def test_old_active_steps_down_on_a_higher_epoch():
    a = ex.LeaseArbiter(0.0, self_uuid=A)
    assert a.decide([m(A), m(B)], 2.0) is True  # lowest UUID, nobody holds a lease
    assert a.epoch == 1
    a.on_broadcast(B, lease(1), 2.1)  # same epoch from a higher UUID: keep it
    assert a.role == "active"
    a.on_broadcast(B, lease(2), 2.2)
    assert (a.role, a.active_uuid, a.epoch) == ("standby", B, 2)


def test_bootstrap_lowest_running_uuid_goes_first():
    a = ex.LeaseArbiter(0.0, self_uuid=A)
    b = ex.LeaseArbiter(0.0, self_uuid=B)
    assert not a.wants_status(1.0)  # a newcomer first listens for a whole window
    assert b.decide([m(A), m(B)], 2.0) is False
    assert a.decide([m(A), m(B)], 2.0) is True
    # without its own UUID a member waits while another member runs
    c = ex.LeaseArbiter(0.0)
    assert c.decide([m(A), m(B)], 2.0) is False
    assert c.decide([m(A, "stopped", "shutdown")], 2.0) is True


def test_foreign_and_malformed_broadcasts_are_ignored():
    b = ex.LeaseArbiter(0.0, self_uuid=B)
    for data in ("text", {"app": "other", "type": "lease", "epoch": 9}, {"app": ex.APP}, None):
        b.on_broadcast(A, data, 1.0)
    b.on_broadcast(A, {"app": ex.APP, "type": "lease", "epoch": True}, 1.0)
    assert b.active_uuid is None and b.epoch == 0


def test_a_hung_active_is_taken_over_on_its_heartbeat_fault_while_nova_says_running():
    b = ex.LeaseArbiter(0.0, period_s=0.5, misses=3, self_uuid=B)
    b.on_broadcast(A, lease(2), 0.0)
    hung = {**m(A), "guest_health": "heartbeat_lost"}
    assert hung["state"] == "active" and hung["power_state"] == "running"
    b.on_notification(hung, 0.2)  # guest-ha tells the group before any lease is missed
    assert not b.wants_status(0.2)  # leases still fresh: an announcement alone is not enough
    assert b.wants_status(1.6)  # leases missed: check at once
    # Nova still says active/running, but its heartbeat is lost: take over.
    assert b.decide([hung, m(B)], 1.6) is True
    assert (b.role, b.epoch) == ("active", 3)
    # A recovered peer counts as up again.
    assert ex.is_up({**m(A), "guest_health": "healthy"})
