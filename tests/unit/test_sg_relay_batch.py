"""The compute agent's server-group relay batches PDUs that arrive close together."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Tuple

import pytest

from guest_ha.compute.config import VmSpec
from guest_ha.compute.sg_relay import MAX_BATCH, ServerGroupRelay
from guest_ha.messaging.payloads import SG_RELAY, SG_RELAY_BATCH
from guest_ha.protocol import GUEST_TO_HOST, SERVER_GROUP, make

pytestmark = pytest.mark.unit


class _Client:
    """Records casts; ``gate`` holds the first cast so later PDUs queue up."""

    def __init__(self) -> None:
        self.casts: List[Tuple[str, Dict[str, Any]]] = []
        self.gate = threading.Event()
        self.done = threading.Event()

    def cast(self, method: str, **kw: Any) -> None:
        self.gate.wait(10)
        self.casts.append((method, kw))
        self.done.set()


def _spec(i: int) -> VmSpec:
    uuid = f"00000000-0000-4000-8000-{i:012d}"
    return VmSpec(uuid=uuid, name=f"vm{i}", socket_path="/nonexistent", server_group="g1")


def _pdu(i: int) -> Any:
    return make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data={"i": i})


def test_pdus_queued_within_linger_go_in_one_cast() -> None:
    client = _Client()
    relay = ServerGroupRelay(client, "host-a", linger_s=5.0, busy_window_s=float("inf"))
    for i in range(3):
        relay(_spec(i), _pdu(i))
    client.gate.set()
    relay.close()  # the sentinel ends the linger early; nothing is lost
    assert [m for m, _ in client.casts] == [SG_RELAY_BATCH]
    kw = client.casts[0][1]
    assert kw["host"] == "host-a"
    assert [it["fields"]["data"]["i"] for it in kw["items"]] == [0, 1, 2]
    assert relay.relayed == 3 and relay.dropped == 0


def test_single_pdu_is_a_plain_cast_and_batches_are_bounded() -> None:
    client = _Client()
    client.gate.set()
    relay = ServerGroupRelay(client, "host-a", linger_s=0.0)
    relay(_spec(1), _pdu(1))
    assert client.done.wait(10)
    assert client.casts[0][0] == SG_RELAY
    assert client.casts[0][1]["instance_uuid"].endswith("000000000001")
    client.casts.clear()
    client.gate.clear()
    for i in range(MAX_BATCH + 5):
        relay(_spec(i), _pdu(i))
    client.gate.set()
    relay.close()
    sizes = [len(kw.get("items", [kw])) for _, kw in client.casts]
    assert sum(sizes) == MAX_BATCH + 5
    assert max(sizes) <= MAX_BATCH
    assert relay.dropped == 0


def test_after_a_quiet_spell_a_pdu_leaves_without_the_linger() -> None:
    client = _Client()
    client.gate.set()
    relay = ServerGroupRelay(client, "host-a", linger_s=5.0, busy_window_s=0.05)
    try:
        relay(_spec(1), _pdu(1))
        # Idle relay: no 5 s linger for a lone PDU.
        assert client.done.wait(2.0)
        assert [m for m, _ in client.casts] == [SG_RELAY]
    finally:
        relay.close()
