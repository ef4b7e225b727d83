"""The protocol core's fault hold (heartbeat_lost waits for the hypervisor's word) and
the host channel's drain point.

A real HostChannel and GuestChannel (the Link of conftest.py) make a real
missed heartbeat; FaultHold decides what is reported once the hypervisor
answers (or, on the caller's timeout, "running").
"""

from __future__ import annotations

import pytest

from channel_support import drain, take_output
from guest_ha.protocol.events import EventKind
from guest_ha.protocol.faulthold import FaultHold
from guest_ha.protocol.heartbeat import HeartbeatEvent
from guest_ha.protocol.messages import make

pytestmark = pytest.mark.unit


def lost_heartbeat(proto, clock):
    """A registered guest that stops answering: the host's events up to heartbeat_lost."""
    link = proto.Link(clock, interval_ms=1000)
    link.start()
    link.run_for(2.5)
    link.guest_muted = True
    link.run_for(3.0)
    assert EventKind.HEARTBEAT_LOST in link.kinds()
    return link


def offer_all(hold: FaultHold, events, can_confirm=True):
    ready, tokens = [], []
    for event in events:
        out, token = hold.offer(event, can_confirm)
        ready += out
        if token is not None:
            tokens.append(token)
    return ready, tokens


def test_without_a_confirmer_nothing_is_held(proto, clock) -> None:
    link = lost_heartbeat(proto, clock)
    hold = FaultHold()
    ready, tokens = offer_all(hold, link.events, can_confirm=False)
    assert ready == link.events and tokens == [] and not hold.holding


def test_the_fault_and_what_follows_wait_for_one_answer(proto, clock) -> None:
    link = lost_heartbeat(proto, clock)
    hold = FaultHold()
    before = [e for e in link.events if e.kind == EventKind.REGISTERED]
    after = HeartbeatEvent(EventKind.RECOVERED, clock.now, {})
    ready, tokens = offer_all(hold, [*link.events, after])
    assert ready == before  # registered passed; heartbeat_lost and recovered wait
    assert tokens == [hold.token] and hold.holding
    # A running domain: the fault is real, reported with what waited, in order.
    events = hold.answer(hold.token, True, "running", link.host, clock.now)
    assert [e.kind for e in events] == [EventKind.HEARTBEAT_LOST, EventKind.RECOVERED]
    assert not hold.holding


def test_a_paused_domain_explains_the_silence(proto, clock) -> None:
    link = lost_heartbeat(proto, clock)
    hold = FaultHold()
    exit_event = HeartbeatEvent(EventKind.EXIT, clock.now, {"reason": "x"})
    recovered = HeartbeatEvent(EventKind.RECOVERED, clock.now, {})
    offer_all(hold, [*link.events, recovered, exit_event])
    assert link.host.heartbeat_view.health == EventKind.HEARTBEAT_LOST
    events = hold.answer(hold.token, False, "paused", link.host, clock.now)
    # The fault and its recovery are dropped; anything else is kept.
    assert [e.kind for e in events] == [EventKind.EXIT]
    # Retracted on the channel (no event: it was never reported), heartbeating suspended.
    assert link.host.heartbeat_view.health == "healthy"
    assert link.host.heartbeat_view.state == "suspended"
    assert drain(link.host, clock.now).events == []


def test_stale_answers_are_ignored(proto, clock) -> None:
    link = lost_heartbeat(proto, clock)
    hold = FaultHold()
    offer_all(hold, link.events)
    old = hold.token
    assert hold.answer(old + 1, True, "running", link.host, clock.now) is None
    assert hold.answer(old, True, "running", link.host, clock.now)
    assert hold.answer(old, False, "paused", link.host, clock.now) is None  # already answered
    # The next fault asks a new question.
    lost = HeartbeatEvent(EventKind.HEARTBEAT_LOST, clock.now, {})
    ready, token = hold.offer(lost, True)
    assert ready == [] and token == hold.token and token != old


def test_next_items_is_the_host_channels_one_drain_point(proto, clock) -> None:
    """PDUs, events and log records come out of one call, typed, in that order."""
    link = proto.Link(clock, interval_ms=1000)
    link.host.connection_made(clock.now)
    link.guest_hb.start(clock.now)
    link.guest.tick(clock.now)
    out = take_output(link.guest)
    broadcast = make(proto.SERVER_GROUP, "broadcast", proto.GUEST_TO_HOST, data={"n": 1})
    link.host.receive_data(out + broadcast.encode() + b"\n{not json}\n", clock.now)
    items = link.host.next_items(clock.now)
    kinds = [type(item).__name__ for item in items]
    assert kinds == ["GuestPdu", "HeartbeatEvent", "LogRecord"], items
    assert items[0].msg.msg_type == "broadcast" and items[0].msg["data"] == {"n": 1}
    assert items[1].kind == EventKind.REGISTERED
    assert "rejected" in items[2].text
    assert link.host.next_items(clock.now) == []  # drained
