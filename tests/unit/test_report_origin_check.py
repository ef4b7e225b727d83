"""The report origin check's decisions (controller/origin.py); the broker and
Nova sides are in tests/integration/test_report_origin.py."""

from __future__ import annotations

from typing import Any, Dict, Optional, Set

import pytest

from guest_ha.controller.origin import MembershipLocator, OriginCheck, Undecided
from guest_ha.messaging.identity import BROKER_USER

pytestmark = pytest.mark.unit

P = "guest-ha-compute-"


def ctxt(host: Optional[str]) -> Dict[str, Any]:
    return {"host": "whatever-the-body-says", **({BROKER_USER: P + host} if host else {})}


def ev(uuid: str, host: Optional[str] = None) -> Dict[str, Any]:
    e = {"idempotency_key": f"k-{uuid}-{host}", "instance_uuid": uuid, "kind": "heartbeat_lost"}
    if host:
        e["compute_host"] = host
    return e


def test_membership_binds_to_the_first_host_until_it_lets_go() -> None:
    loc = MembershipLocator()
    check = OriginCheck("membership", P, loc)
    with pytest.raises(Undecided):
        loc.hosts("vm1")
    loc.observe("a", ["vm1"], full=True)
    loc.observe("b", ["vm1", "vm2"], full=True)  # b claims a's VM: not moved
    ok, rejected, undecided = check.screen(ctxt("b"), [ev("vm1", "b"), ev("vm2", "b")])
    assert [e["instance_uuid"] for e in ok] == ["vm2"]
    assert [(e["instance_uuid"], r) for e, r in rejected] == [("vm1", "not_on_host")]
    assert undecided == []
    # a no longer runs it (migrated): b's next full list takes it over.
    loc.observe("a", [], full=True)
    loc.observe("b", ["vm1", "vm2"], full=True)
    ok, rejected, _ = check.screen(ctxt("b"), [ev("vm1", "b")])
    assert len(ok) == 1 and rejected == []


def test_unauthenticated_mismatch_and_undecided() -> None:
    loc = MembershipLocator()
    loc.observe("a", ["vm1"], full=True)
    check = OriginCheck("membership", P, loc)
    _, rejected, _ = check.screen(ctxt(None), [ev("vm1", "a")])
    assert rejected[0][1] == "unauthenticated"
    _, rejected, _ = check.screen({BROKER_USER: "guest"}, [ev("vm1", "a")])
    assert rejected[0][1] == "unauthenticated"
    _, rejected, _ = check.screen(ctxt("b"), [ev("vm1", "a")])
    assert rejected[0][1] == "host_mismatch"
    ok, rejected, undecided = check.screen(ctxt("a"), [ev("vm9", "a")])
    assert (ok, rejected, [e["instance_uuid"] for e in undecided]) == ([], [], ["vm9"])
    assert check.rejected["unauthenticated"] == 2 and check.rejected["host_mismatch"] == 1
    assert check.host_ok(ctxt("a"), "a", "vm_states")
    assert not check.host_ok(ctxt("a"), "b", "vm_states")


class CountingLocator:
    """A locator whose answers the test sets (stands in for Nova's cache)."""

    def __init__(self) -> None:
        self.answer: Optional[Set[str]] = {"a"}
        self.cached: Optional[Set[str]] = {"a"}
        self.api_calls = 0

    def hosts(self, uuid: str, fresh: bool = False) -> Optional[Set[str]]:
        if fresh:
            self.api_calls += 1
            self.cached = self.answer
        return self.cached


def test_a_stale_cached_answer_is_read_again_before_rejecting() -> None:
    loc = CountingLocator()
    check = OriginCheck("nova", P, loc)
    loc.answer = {"b"}  # the VM moved to b; the cache still says a
    ok, rejected, _ = check.screen(ctxt("b"), [ev("vm1", "b")])
    assert len(ok) == 1 and rejected == [] and loc.api_calls == 1
    loc.answer = None  # deleted
    loc.cached = {"b"}
    _, rejected, _ = check.screen(ctxt("a"), [ev("vm1", "a")])
    assert rejected[0][1] == "unknown_instance"


def test_off_trusts_the_body() -> None:
    check = OriginCheck("off", P)
    ok, rejected, undecided = check.screen({}, [ev("vm1", "x")])
    assert len(ok) == 1 and rejected == [] == undecided
    assert check.host_ok({}, "anything", "sg_relay")
