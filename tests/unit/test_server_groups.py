"""Server group routing and membership on the controller (no broker, no Nova)."""

from __future__ import annotations

import json
import uuid as uuidlib
from typing import Any, Dict, List, Tuple

import pytest

from guest_ha.controller.server_groups import (
    FileSource,
    MembershipError,
    NovaNotificationEndpoint,
    NovaSource,
    ServerGroupRouter,
    make_status,
    status_from_server,
)
from guest_ha.protocol.messages import MAX_BROADCAST_BYTES as MAX_DATA_BYTES

pytestmark = pytest.mark.unit

A, B, C, D, E = (str(uuidlib.UUID(int=i)) for i in range(1, 6))


class StaticSource:
    kind = "nova"

    def __init__(self, groups, statuses, fail: bool = False) -> None:
        self.groups = groups
        self.statuses = statuses
        self.fail = fail
        self.looked_up: List[str] = []

    def load(self):
        if self.fail:
            raise MembershipError("Nova is down")
        return (
            {k: set(v) for k, v in self.groups.items()},
            {k: k for k in self.groups},
            dict(self.statuses),
        )

    def server(self, uuid):
        self.looked_up.append(uuid)
        return self.statuses.get(uuid)


def st(uuid: str, host: str, state: str = "active", power: str = "running") -> Dict[str, Any]:
    return make_status(
        {
            "uuid": uuid,
            "display_name": f"vm-{uuid[-1]}",
            "host": host,
            "state": state,
            "power_state": power,
        }
    )


STATUSES = {A: st(A, "h1"), B: st(B, "h1"), C: st(C, "h2"), D: st(D, "h2"), E: st(E, "h1")}


def router(source=None, **kw) -> Tuple[ServerGroupRouter, List[Tuple[str, list]], List[list]]:
    casts: List[Tuple[str, list]] = []
    syncs: List[list] = []
    r = ServerGroupRouter(
        source or StaticSource({"g1": [A, B, C], "g2": [D]}, STATUSES),
        lambda host, items: casts.append((host, items)),
        sync=syncs.append,
        **kw,
    )
    r.refresh()
    return r, casts, syncs


def by_vm(casts) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}
    for _host, items in casts:
        for item in items:
            out.setdefault(item["instance_uuid"], []).append(item)
    return out


def test_broadcast_reaches_every_other_member_once_per_host() -> None:
    r, casts, _ = router()
    r.relay("h1", A, "broadcast", {"data": {"role": "active"}})
    assert sorted(h for h, _ in casts) == ["h1", "h2"]  # one cast per host
    got = by_vm(casts)
    assert set(got) == {B, C}  # never A itself, never D (other group), never E
    for item in got[B] + got[C]:
        assert item["msg_type"] == "broadcast"
        assert item["fields"] == {"source_instance": A, "data": {"role": "active"}}


def test_status_answers_every_member_then_done_to_the_asker_host() -> None:
    r, casts, _ = router()
    r.relay("h2", C, "status_query", {"seq": 7})
    assert len(casts) == 1 and casts[0][0] == "h2"
    items = casts[0][1]
    assert all(i["instance_uuid"] == C for i in items)
    assert [i["msg_type"] for i in items] == ["status_response"] * 3 + ["status_response_done"]
    assert {i["fields"]["data"]["uuid"] for i in items[:3]} == {A, B, C}
    assert items[0]["fields"]["data"]["power_state"] == "running"
    assert items[-1]["fields"] == {"seq": 7}


def test_vm_in_no_group_is_nacked() -> None:
    r, casts, _ = router()
    r.relay("h1", E, "broadcast", {"data": 1})
    assert casts == [
        (
            "h1",
            [
                {
                    "instance_uuid": E,
                    "msg_type": "nack",
                    "fields": {
                        "orig_msg_type": "broadcast",
                        "log_msg": "not_in_server_group: this VM is in no server group",
                    },
                }
            ],
        )
    ]
    assert r.counters["nacks"] == 1


@pytest.mark.parametrize(
    "msg_type,fields,code",
    [
        ("broadcast", {"data": "x" * MAX_DATA_BYTES}, "invalid_field"),
        ("broadcast", {}, "invalid_field"),
        ("status_query", {"seq": "7"}, "invalid_field"),
        ("status_query", {"seq": True}, "invalid_field"),
        ("hello", {}, "unknown_msg_type"),
    ],
)
def test_malformed_relays_are_nacked_not_routed(msg_type, fields, code) -> None:
    r, casts, _ = router()
    r.relay("h1", A, msg_type, fields)
    assert len(casts) == 1 and casts[0][1][0]["msg_type"] == "nack"
    assert casts[0][1][0]["fields"]["log_msg"].startswith(code + ": ")


def test_garbage_relay_is_dropped() -> None:
    r, casts, _ = router()
    r.relay("h1", "not-a-uuid", "broadcast", {"data": 1})
    r.relay("", A, "broadcast", {"data": 1})
    r.relay("h1", A, "broadcast", ["data"])  # type: ignore[arg-type]
    assert casts == [] and r.counters["malformed"] == 3


def test_not_loaded_is_nacked_unavailable_then_recovers() -> None:
    source = StaticSource({"g1": [A, B]}, STATUSES, fail=True)
    r, casts, _ = router(source)
    r.relay("h1", A, "broadcast", {"data": 1})
    assert casts[0][1][0]["fields"]["log_msg"].startswith("unavailable: ")
    source.fail = False
    assert r.refresh()
    casts.clear()
    r.relay("h1", A, "broadcast", {"data": 1})
    assert by_vm(casts).keys() == {B}


def test_cast_failure_is_counted_not_raised() -> None:
    def boom(host, items):
        raise OSError("broker down")

    r = ServerGroupRouter(StaticSource({"g1": [A, B, C]}, STATUSES), boom)
    r.refresh()
    r.relay("h1", A, "broadcast", {"data": 1})
    assert r.counters["cast_errors"] == 2


def nova_payload(object_name: str, **data: Any) -> Dict[str, Any]:
    return {
        "nova_object.name": object_name,
        "nova_object.namespace": "nova",
        "nova_object.version": "1.8",
        "nova_object.data": data,
    }


def test_nova_instance_notification_reaches_other_members_once() -> None:
    r, casts, syncs = router()
    payload = nova_payload(
        "InstanceActionPayload",
        uuid=C,
        display_name="vm-c",
        host="h2",
        state="stopped",
        task_state=None,
        power_state="shutdown",
        updated_at="2026-01-01T00:00:00Z",
    )
    endpoint = NovaNotificationEndpoint(r)
    endpoint.info({}, "nova-compute:h2", "instance.power_off.end", payload, {})
    got = by_vm(casts)
    assert set(got) == {A, B}
    data = got[A][0]["fields"]["data"]
    assert got[A][0]["msg_type"] == "notification"
    assert (data["uuid"], data["state"], data["power_state"]) == (C, "stopped", "shutdown")
    assert syncs and syncs[0][0]["op"] == "status"  # the other controllers are told
    # The same state again (e.g. the instance.update that goes with it): no repeat.
    casts.clear()
    endpoint.info({}, "nova-compute:h2", "instance.update", payload, {})
    assert casts == []


def test_instance_delete_notifies_then_forgets() -> None:
    r, casts, _ = router()
    payload = nova_payload("InstanceActionPayload", uuid=B, host="h1", state="deleted")
    r.nova_notification("instance.delete.end", payload)
    assert set(by_vm(casts)) == {A, C}
    casts.clear()
    r.relay("h1", A, "broadcast", {"data": 1})
    assert set(by_vm(casts)) == {C}


def test_server_group_add_member_joins_and_unknown_member_is_fetched() -> None:
    source = StaticSource({"g1": [A, B, C], "g2": [D]}, STATUSES)
    r, casts, _ = router(source)
    r.nova_notification(
        "server_group.add_member",
        nova_payload("ServerGroupPayload", uuid="g2", name="g2", members=[D, E]),
    )
    # E was known: D hears about its new peer.
    assert set(by_vm(casts)) == {D}
    casts.clear()
    r.relay("h1", E, "broadcast", {"data": 1})
    assert set(by_vm(casts)) == {D}
    new = str(uuidlib.uuid4())
    source.statuses[new] = st(new, "h3")
    r.nova_notification(
        "server_group.add_member",
        nova_payload("ServerGroupPayload", uuid="g2", members=[D, E, new]),
    )
    for _ in range(100):
        if r.membership.host_of(new):
            break
        import time

        time.sleep(0.01)
    assert source.looked_up == [new] and r.membership.host_of(new) == "h3"
    r.nova_notification("server_group.delete", nova_payload("ServerGroupPayload", uuid="g2"))
    casts.clear()
    r.relay("h1", E, "broadcast", {"data": 1})
    assert casts[0][1][0]["msg_type"] == "nack"


def test_sync_from_another_controller_updates_cache_without_notifying() -> None:
    r, casts, syncs = router()
    r.apply([{"op": "status", "uuid": C, "status": {"state": "paused"}}], emit=False)
    assert casts == [] and syncs == []
    assert r.membership.status_of(C)["state"] == "paused"


class FileRouter:
    def __init__(self, tmp_path, groups) -> None:
        path = tmp_path / "groups.yaml"
        path.write_text(json.dumps({"groups": groups}))
        self.router, self.casts, self.syncs = router(FileSource(str(path)))


def test_file_mode_groups_from_file_and_reports(tmp_path) -> None:
    f = FileRouter(tmp_path, {"web": [A, B]})
    r, casts = f.router, f.casts
    # Members of file groups are routable once their host reported them.
    r.vm_states("h1", [{"uuid": A, "name": "a", "state": "running"}])
    r.vm_states("h2", [{"uuid": B, "name": "b", "state": "active", "power_state": "running"}])
    # C joins "web" through its compute agent's report (operator-set metadata).
    r.vm_states("h2", [{"uuid": C, "name": "c", "state": "active", "group": "web"}], full=False)
    casts.clear()
    r.relay("h1", A, "broadcast", {"data": "hi"})
    assert set(by_vm(casts)) == {B, C}
    assert r.membership.status_of(A)["state"] == "active"  # libvirt name mapped
    # B shuts off: A and C are told.
    casts.clear()
    r.vm_states(
        "h2",
        [
            {"uuid": B, "name": "b", "state": "shutoff"},
            {"uuid": C, "name": "c", "state": "active", "group": "web"},
        ],
    )
    got = by_vm(casts)
    assert set(got) == {A, C}
    assert got[A][0]["fields"]["data"]["power_state"] == "shutdown"
    # Same report again: nothing new, nothing sent, nothing synced.
    casts.clear()
    f.syncs.clear()
    r.vm_states(
        "h2",
        [
            {"uuid": B, "name": "b", "state": "shutoff"},
            {"uuid": C, "name": "c", "state": "active", "group": "web"},
        ],
    )
    assert casts == [] and f.syncs == []
    # B disappears from h2's full report: it has gone.
    r.vm_states("h2", [{"uuid": C, "name": "c", "state": "active", "group": "web"}])
    assert by_vm(casts)[A][0]["fields"]["data"]["state"] == "deleted"


def test_file_mode_group_from_relay(tmp_path) -> None:
    f = FileRouter(tmp_path, {})
    r, casts = f.router, f.casts
    r.relay("h1", A, "broadcast", {"data": 1}, group="db")
    assert casts == []  # alone in its group: nobody to deliver to (no nack either)
    r.relay("h2", B, "status_query", {"seq": 1}, group="db")
    items = casts[-1][1]
    assert {i["fields"]["data"]["uuid"] for i in items[:-1]} == {A, B}
    assert r.membership.host_of(A) == "h1"


def test_file_source_errors(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups: {web: [not-a-uuid]}")
    with pytest.raises(MembershipError):
        FileSource(str(bad)).load()
    assert FileSource(str(tmp_path / "missing.yaml")).load()[0] == {}


def test_status_object_from_nova_api_server_and_size_limit() -> None:
    server = {
        "id": A,
        "name": "vnf-a",
        "status": "ACTIVE",
        "OS-EXT-SRV-ATTR:host": "compute-1",
        "OS-EXT-STS:vm_state": "active",
        "OS-EXT-STS:task_state": None,
        "OS-EXT-STS:power_state": 1,
        "OS-EXT-AZ:availability_zone": "nova",
        "updated": "2026-01-01T00:00:00Z",
    }
    status = status_from_server(server)
    assert status == {
        "uuid": A,
        "display_name": "vnf-a",
        "host": "compute-1",
        "state": "active",
        "task_state": None,
        "power_state": "running",
        "availability_zone": "nova",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    huge = make_status({"uuid": A, "display_name": "é" * 5000, "node": "n" * 3000})
    assert len(json.dumps(huge, separators=(",", ":"), ensure_ascii=False).encode()) <= 3050
    assert huge["uuid"] == A and "node" not in huge


class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code = status
        self._body = body

    def json(self) -> Any:
        return self._body


class FakeSession:
    def __init__(self) -> None:
        self.paths: List[str] = []

    def get(self, path, **kw):
        self.paths.append(path)
        assert kw["headers"]["OpenStack-API-Version"] == "compute 2.71"
        if path.startswith("/os-server-groups"):
            offset = int(path.rsplit("offset=", 1)[1])
            groups = [{"id": "g1", "name": "web", "members": [A, B]}, {"id": "g2", "members": [C]}]
            return FakeResponse(200, {"server_groups": groups[offset : offset + 1]})
        if path.startswith("/servers/detail"):
            servers = [{"id": u, "name": u[-1], "OS-EXT-STS:power_state": 4} for u in (A, B, C, D)]
            start = 0
            if "marker=" in path:
                start = [s["id"] for s in servers].index(path.rsplit("marker=", 1)[1]) + 1
            return FakeResponse(200, {"servers": servers[start : start + 1]})
        return FakeResponse(404, {})


def test_nova_source_pages_through_groups_and_servers() -> None:
    session = FakeSession()
    groups, names, statuses = NovaSource(session, page_size=1).load()
    assert groups == {"g1": {A, B}, "g2": {C}} and names == {"g1": "web", "g2": "g2"}
    assert set(statuses) == {A, B, C}  # D is in no group: not kept
    assert statuses[A]["power_state"] == "shutdown"
    assert NovaSource(session).server(E) is None


def test_heartbeat_fault_and_recovery_tell_the_peers() -> None:
    r, casts, syncs = router()
    r.heartbeat_event(C, "heartbeat_lost")
    got = by_vm(casts)
    assert set(got) == {A, B}  # C's peers, not C, not D (other group)
    data = got[A][0]["fields"]["data"]
    assert got[A][0]["msg_type"] == "notification"
    assert (data["uuid"], data["guest_health"], data["state"]) == (C, "heartbeat_lost", "active")
    assert syncs and syncs[-1][0]["status"]["guest_health"] == "heartbeat_lost"
    casts.clear()
    r.heartbeat_event(C, "heartbeat_lost")  # the same again (a duplicate): no repeat
    assert casts == []
    r.heartbeat_event(C, "recovered")
    assert by_vm(casts)[B][0]["fields"]["data"]["guest_health"] == "healthy"
    # A status query answers with it too.
    casts.clear()
    r.relay("h1", A, "status_query", {"seq": 1})
    answers = {i["fields"]["data"]["uuid"]: i["fields"]["data"] for i in casts[0][1][:-1]}
    assert answers[C]["guest_health"] == "healthy"


def test_heartbeat_events_outside_groups_or_lifecycle_notify_nobody() -> None:
    r, casts, _ = router()
    r.heartbeat_event(E, "heartbeat_lost")  # E is in no group
    r.heartbeat_event(A, "suspended")  # lifecycle: the Nova states tell it
    r.heartbeat_event("not-a-uuid", "unhealthy")
    assert casts == []
    assert r.snapshot()["heartbeat_events"] == 0


def _gated_router():
    """A started router whose casts block until ``gate`` is set (``entered`` says
    one is under way); ``casts`` records (host, [data, ...]) once let through."""
    import threading

    entered, gate = threading.Event(), threading.Event()
    casts: List[Tuple[str, list]] = []

    def cast(host: str, items: list) -> None:
        entered.set()
        assert gate.wait(5)
        casts.append((host, [i["fields"]["data"] for i in items]))

    r = ServerGroupRouter(StaticSource({"g1": [A, B, C]}, STATUSES), cast)
    r.start()
    return r, casts, entered, gate


def test_started_router_sends_from_a_thread_merging_per_host_in_order() -> None:
    r, casts, entered, gate = _gated_router()
    try:
        r.relay("h1", A, "broadcast", {"data": 0})  # returns at once; the sender casts it
        assert entered.wait(5)
        for i in range(1, 6):  # queued while the sender is busy
            r.relay("h1", A, "broadcast", {"data": i})
        gate.set()
        _wait_for(lambda: len(casts) >= 4)
    finally:
        r.stop()
    by_host: Dict[str, list] = {}
    for host, data in casts:
        by_host.setdefault(host, []).append(data)
    # One cast per host for the first, one per host for the five that piled up.
    assert by_host == {"h1": [[0], [1, 2, 3, 4, 5]], "h2": [[0], [1, 2, 3, 4, 5]]}
    assert r.snapshot()["casts"] == 4 and r.snapshot()["deliveries"] == 12


def _timed_router(interval_s: float, statuses: Dict[str, Any], groups: Dict[str, list]):
    import threading
    import time

    casts: List[Tuple[str, list, float]] = []
    lock = threading.Lock()

    def cast(host: str, items: list) -> None:
        with lock:
            casts.append((host, [i["fields"]["data"] for i in items], time.monotonic()))

    r = ServerGroupRouter(StaticSource(groups, statuses), cast, cast_interval_s=interval_s)
    r.start()
    return r, casts


def _wait_for(pred, timeout: float = 5.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_paced_casts_to_one_host_start_an_interval_apart_and_merge() -> None:
    r, casts = _timed_router(0.3, STATUSES, {"g1": [A, B, C]})
    try:
        r.relay("h1", A, "broadcast", {"data": 0})
        _wait_for(lambda: len(casts) == 2)  # an idle host gets its delivery at once
        for i in (1, 2, 3):
            r.relay("h1", A, "broadcast", {"data": i})
        _wait_for(lambda: len(casts) == 4)
    finally:
        r.stop()
    first = {host: t for host, data, t in casts if data == [0]}
    second = {host: (data, t) for host, data, t in casts if data != [0]}
    assert {h: d for h, (d, _) in second.items()} == {"h1": [1, 2, 3], "h2": [1, 2, 3]}
    for host, (_, t) in second.items():
        # The interval is measured between cast starts; the callback runs just after.
        assert t - first[host] >= 0.25
    assert r.snapshot()["casts"] == 4


def test_pacing_holds_back_only_the_busy_host_and_stop_flushes() -> None:
    statuses = {A: st(A, "h1"), B: st(B, "h1"), C: st(C, "h2"), D: st(D, "h2"), E: st(E, "h3")}
    r, casts = _timed_router(30.0, statuses, {"g1": [A, B, C], "g3": [D, E]})
    try:
        r.relay("h1", A, "broadcast", {"data": 0})
        _wait_for(lambda: len(casts) == 2)
        r.relay("h1", A, "broadcast", {"data": 1})  # h1 and h2 must wait 30 s
        r.relay("h2", D, "broadcast", {"data": 2})  # h3 has had nothing: goes now
        _wait_for(lambda: any(host == "h3" for host, _, _ in casts))
        assert len(casts) == 3
    finally:
        r.stop()  # what waits for its interval is cast at once, not dropped
    assert sorted((host, data) for host, data, _ in casts) == [
        ("h1", [0]),
        ("h1", [1]),
        ("h2", [0]),
        ("h2", [1]),
        ("h3", [2]),
    ]


def test_a_backlog_leaves_in_casts_of_bounded_size_in_order() -> None:
    r, casts, entered, gate = _gated_router()
    limit = r.MAX_CAST_ITEMS
    try:
        r.relay("h1", A, "broadcast", {"data": 0})
        assert entered.wait(5)
        for i in range(1, 2 * limit + 11):  # piles up behind the blocked cast
            r.relay("h1", A, "broadcast", {"data": i})
        gate.set()
        _wait_for(lambda: sum(len(d) for _, d in casts) == 2 * (2 * limit + 11))
    finally:
        r.stop()
    for host in ("h1", "h2"):
        sizes = [len(d) for h, d in casts if h == host]
        assert sizes == [1, limit, limit, 10]
        assert [x for h, d in casts if h == host for x in d] == list(range(2 * limit + 11))
