"""The heartbeat machines follow their transition tables (docs/protocol.md §6.2, §6.4).

Every (state, input) pair of both tables, listed or not, is driven on a real
machine: it must land where the table says (an unlisted input leaves the
state as it is).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from guest_ha.protocol.envelope import HEARTBEAT
from guest_ha.protocol.errors import NotRegistered
from guest_ha.protocol.events import GuestEventKind
from guest_ha.protocol.heartbeat import GuestHeartbeat, HostHeartbeat, HostPolicy
from guest_ha.protocol.messages import GUEST_TO_HOST, HOST_TO_GUEST, make
from guest_ha.protocol.transitions import (
    GUEST_TRANSITIONS,
    HOST_TRANSITIONS,
    GuestInput,
    GuestState,
    HostInput,
    HostState,
    guest_next,
    host_next,
)

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
INV = "inv-1"


def init(invocation_id: str = INV):
    return make(
        HEARTBEAT, "init", GUEST_TO_HOST, invocation_id=invocation_id, name="g", interval_ms=1000
    )


def host_in(state: HostState, registered: bool) -> HostHeartbeat:
    """A host machine in ``state``, connected, with or without a registration."""
    hb = HostHeartbeat(HostPolicy(restart_timeout_s=60.0), nonce_source=lambda: "0" * 16)
    hb.connection_made(0.0)
    if registered or state in (HostState.MONITORING, HostState.EXITED):
        hb.receive(init(), 0.1)
    if state == HostState.SUSPENDED:
        hb.suspend(0.2, "paused")
    elif state == HostState.AWAITING_INIT and hb.state == HostState.MONITORING:
        hb.connection_made(0.2)
    elif state == HostState.EXITED:
        hb.receive(make(HEARTBEAT, "exit", GUEST_TO_HOST, invocation_id=INV), 0.2)
    assert hb.state == state
    return hb


def host_apply(hb: HostHeartbeat, event: HostInput) -> None:
    now = 1.0
    if event == HostInput.CHANNEL_UP:
        hb.connection_made(now)
    elif event == HostInput.SUSPEND:
        hb.suspend(now, "paused")
    elif event == HostInput.EXPECT_REGISTRATION:
        hb.expect_registration(now, "reboot")
    elif event in (HostInput.RESUME, HostInput.RESUME_REGISTERED):
        hb.resume(now)
    elif event == HostInput.REGISTER:
        hb.receive(init("inv-new"), now)
    elif event == HostInput.EXIT:
        hb.receive(
            make(HEARTBEAT, "exit", GUEST_TO_HOST, invocation_id=hb.invocation_id or INV), now
        )


@pytest.mark.parametrize(("state", "event"), list(itertools.product(HostState, HostInput)))
def test_host_machine_follows_its_table(state: HostState, event: HostInput) -> None:
    registered = event != HostInput.RESUME
    if event == HostInput.RESUME and state in (HostState.MONITORING, HostState.EXITED):
        registered = True  # these states always have a registration; resume is ignored
    hb = host_in(state, registered)
    if event == HostInput.RESUME and hb.invocation_id is not None:
        event = HostInput.RESUME_REGISTERED
    host_apply(hb, event)
    assert hb.state == host_next(state, event)


def guest_in(state: GuestState) -> GuestHeartbeat:
    hb = GuestHeartbeat(name="g", interval_ms=1000, invocation_id=INV)
    if state != GuestState.IDLE:
        hb.start(0.0)
    if state == GuestState.REGISTERED:
        hb.receive(
            make(HEARTBEAT, "init_ack", HOST_TO_GUEST, invocation_id=INV, interval_ms=1000), 0.1
        )
    elif state == GuestState.EXITED:
        hb.exit(0.1)
    assert hb.state == state
    return hb


def guest_apply(hb: GuestHeartbeat, event: GuestInput) -> None:
    now = 0.2
    if event == GuestInput.START:
        hb.start(now)
    elif event == GuestInput.HOST_CONNECTED:
        hb.host_connected(now)
    elif event == GuestInput.INIT_ACK:
        hb.receive(
            make(HEARTBEAT, "init_ack", HOST_TO_GUEST, invocation_id=INV, interval_ms=1000), now
        )
    elif event == GuestInput.CHALLENGE:
        hb.receive(make(HEARTBEAT, "challenge", HOST_TO_GUEST, seq=1, nonce="0" * 16), now)
    elif event == GuestInput.NACK:
        hb.receive(
            make(HEARTBEAT, "nack", HOST_TO_GUEST, orig_msg_type="challenge_response", log_msg="x"),
            now,
        )
    elif event == GuestInput.STALE:
        hb.tick(1000.0)
    elif event == GuestInput.SHUTDOWN:
        hb.exit(now)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(GuestState, GuestInput)))
def test_guest_machine_follows_its_table(state: GuestState, event: GuestInput) -> None:
    hb = guest_in(state)
    guest_apply(hb, event)
    assert hb.state == guest_next(state, event)


def test_tables_name_every_state_and_the_spec_names_the_same_states() -> None:
    assert set(HOST_TRANSITIONS) == set(HostState)
    assert set(GUEST_TRANSITIONS) == set(GuestState)
    text = DOCS.read_text(encoding="utf-8")
    host_states = re.search(r"### 6\.2.*?States: (.*?)\.\n", text, re.S)
    guest_states = re.search(r"### 6\.4.*?States: (.*?)\.\n", text, re.S)
    assert host_states and guest_states
    assert set(re.findall(r"`(\w+)`", host_states.group(1))) == {s.value for s in HostState}
    assert set(re.findall(r"`(\w+)`", guest_states.group(1))) == {s.value for s in GuestState}


def test_a_response_while_not_monitoring_is_refused() -> None:
    hb = host_in(HostState.AWAITING_INIT, registered=False)
    with pytest.raises(NotRegistered):
        hb.receive(
            make(
                HEARTBEAT,
                "challenge_response",
                GUEST_TO_HOST,
                seq=1,
                nonce="0" * 16,
                health="healthy",
            ),
            1.0,
        )


def test_guest_events_are_typed_and_read_as_their_log_line() -> None:
    hb = guest_in(GuestState.REGISTERING)
    hb.receive(make(HEARTBEAT, "init_ack", HOST_TO_GUEST, invocation_id=INV, interval_ms=500), 0.1)
    hb.tick(1000.0)
    hb.receive(
        make(HEARTBEAT, "nack", HOST_TO_GUEST, orig_msg_type="init", log_msg="busy: try later"),
        1000.1,
    )
    kinds = [e.kind for e in hb.events]
    assert kinds == [GuestEventKind.REGISTERED, GuestEventKind.STALE, GuestEventKind.HOST_NACKED]
    assert hb.events[0].detail == {"interval_ms": 500}
    assert hb.events[0] == "registered, interval 500 ms"
    assert hb.events[2].detail == {"orig_msg_type": "init", "log_msg": "busy: try later"}
