"""HostHeartbeat: the compute host's heartbeat machine, driven by a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest_ha.protocol import (
    FAULT_KINDS,
    GUEST_TO_HOST,
    HEARTBEAT,
    HeartbeatEvent,
    HostHeartbeat,
    HostPolicy,
    Message,
    NotRegistered,
    make,
)

pytestmark = pytest.mark.unit

T0 = 1000.0


class Nonces:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.n:016x}"


def init(inv="inv-1", interval_ms=1000, name="vm", **extra) -> Message:
    return make(
        HEARTBEAT,
        "init",
        GUEST_TO_HOST,
        invocation_id=inv,
        name=name,
        interval_ms=interval_ms,
        **extra,
    )


def response(challenge: Message, health="healthy", reason="") -> Message:
    return make(
        HEARTBEAT,
        "challenge_response",
        GUEST_TO_HOST,
        seq=challenge["seq"],
        nonce=challenge["nonce"],
        health=health,
        reason=reason,
    )


def exit_msg(inv="inv-1", reason="") -> Message:
    return make(HEARTBEAT, "exit", GUEST_TO_HOST, invocation_id=inv, reason=reason)


def take(hb: HostHeartbeat):
    out, hb.outbox = hb.outbox, []
    return out


def take_events(hb: HostHeartbeat):
    ev, hb.events = hb.events, []
    return ev


def challenges(msgs):
    return [m for m in msgs if m.msg_type == "challenge"]


def registered(interval_ms=1000, policy=None, now=T0, inv="inv-1"):
    """A host machine with a registered guest; returns (hb, first challenge)."""
    hb = HostHeartbeat(policy or HostPolicy(), Nonces())
    hb.connection_made(now)
    hb.receive(init(inv, interval_ms), now)
    out = take(hb)
    assert [m.msg_type for m in out] == ["init_ack", "challenge"]
    return hb, out[1]


def answer_all(hb, now, health="healthy", reason=""):
    for c in challenges(take(hb)):
        hb.receive(response(c, health, reason), now)


# -- policy ------------------------------------------------------------------------------


def test_policy_defaults_and_validation():
    p = HostPolicy()
    assert (p.min_interval_ms, p.max_interval_ms, p.missed_threshold) == (100, 60000, 1)
    for bad in (
        {"min_interval_ms": 0},
        {"min_interval_ms": 500, "max_interval_ms": 400},
        {"missed_threshold": 0},
        {"restart_timeout_s": -1},
    ):
        with pytest.raises(ValueError):
            HostPolicy(**bad)


@pytest.mark.parametrize(
    ("requested", "effective"),
    [
        (1, 100),
        (99, 100),
        (100, 100),
        (250, 250),
        (60000, 60000),
        (60001, 60000),
        (2**31 - 1, 60000),
    ],
)
def test_registration_clamps_interval(requested, effective):
    hb = HostHeartbeat(HostPolicy(), Nonces())
    hb.connection_made(T0)
    hb.receive(init(interval_ms=requested, corrective_action="stop"), T0)
    ack, challenge = take(hb)
    assert ack.msg_type == "init_ack"
    assert ack["interval_ms"] == effective
    assert ack["invocation_id"] == "inv-1"
    assert challenge.msg_type == "challenge" and challenge["seq"] == 1
    assert hb.state == hb.MONITORING
    assert hb.interval_ms == effective and hb.requested_interval_ms == requested
    assert hb.corrective_action == "stop"
    (ev,) = take_events(hb)
    assert ev.kind == "registered" and not ev.is_fault
    assert ev.detail["interval_ms"] == effective
    assert ev.detail["requested_interval_ms"] == requested
    assert ev.detail["previous_invocation_id"] is None
    assert hb.next_deadline() == pytest.approx(T0 + effective / 1000)


def test_custom_policy_clamps():
    hb, _ = registered(interval_ms=50, policy=HostPolicy(min_interval_ms=500, max_interval_ms=900))
    assert hb.interval_ms == 500
    hb2, _ = registered(
        interval_ms=5000, policy=HostPolicy(min_interval_ms=500, max_interval_ms=900)
    )
    assert hb2.interval_ms == 900


def test_initial_state_and_no_deadline():
    hb = HostHeartbeat(HostPolicy(restart_timeout_s=0), Nonces())
    assert hb.next_deadline() is None
    hb.tick(T0)
    assert hb.outbox == [] and hb.events == []
    hb.connection_made(T0)
    assert hb.state == hb.AWAITING_INIT
    assert hb.next_deadline() is None  # restart timeout disabled


def test_challenge_every_interval_with_fresh_nonce():
    hb, first = registered(interval_ms=200)
    hb.receive(response(first), T0 + 0.01)
    seen = [first]
    for k in range(1, 51):
        t = hb.next_deadline()
        assert t == pytest.approx(T0 + k * 0.2)
        hb.tick(t - 0.001)
        assert take(hb) == []  # not yet
        hb.tick(t)
        (c,) = take(hb)
        assert c.msg_type == "challenge" and c["seq"] == k + 1
        seen.append(c)
        hb.receive(response(c), t + 0.05)
    assert len({c["nonce"] for c in seen}) == len(seen)
    assert hb.challenges_sent == 51 and hb.responses_ok == 51
    assert hb.last_rtt_s == pytest.approx(0.05)
    assert [e for e in hb.events if e.is_fault] == []
    assert hb.health == "healthy"


def test_default_nonce_is_valid_and_random():
    hb = HostHeartbeat(HostPolicy())
    hb.connection_made(T0)
    hb.receive(init(), T0)
    c1 = take(hb)[1]
    hb.tick(T0 + 1)
    (c2,) = take(hb)
    # they travel as PDUs the guest validates
    from guest_ha.protocol import HOST_TO_GUEST, validate
    from guest_ha.protocol.envelope import decode_envelope

    for c in (c1, c2):
        assert validate(decode_envelope(c.encode()[1:-1]), HOST_TO_GUEST) == c
    assert c1["nonce"] != c2["nonce"]


def test_missed_answer_gives_exactly_one_heartbeat_lost():
    hb, first = registered(interval_ms=1000)
    hb.receive(response(first), T0 + 0.1)
    take_events(hb)
    hb.tick(T0 + 1)  # challenge 2, never answered
    hb.tick(T0 + 2)  # missed: fault
    events = take_events(hb)
    assert [e.kind for e in events] == ["heartbeat_lost"]
    lost = events[0]
    assert lost.is_fault and lost.at == T0 + 2
    assert lost.detail["misses"] == 1
    assert lost.detail["last_response_age_s"] == pytest.approx(1.9)
    assert lost.detail["invocation_id"] == "inv-1"
    assert lost.at - T0 <= 2 * 1.0  # last answered challenge went out at T0
    for k in range(3, 30):
        hb.tick(T0 + k)
    assert take_events(hb) == []  # no repeats while lost
    assert hb.misses == 28
    assert len(challenges(take(hb))) == 29  # still challenging, to notice recovery


def test_never_answered_first_challenge_is_lost_after_one_interval():
    hb, _ = registered(interval_ms=500)
    take_events(hb)
    hb.tick(T0 + 0.5)
    (ev,) = take_events(hb)
    assert ev.kind == "heartbeat_lost"
    assert ev.detail["last_response_age_s"] is None


def test_recovery_after_heartbeat_lost():
    hb, _ = registered(interval_ms=1000)
    take_events(hb)
    hb.tick(T0 + 1)
    assert [e.kind for e in take_events(hb)] == ["heartbeat_lost"]
    answer_all(hb, T0 + 1.2)
    (ev,) = take_events(hb)
    assert ev.kind == "recovered" and not ev.is_fault
    assert ev.detail["previous_fault"] == "heartbeat_lost"
    assert hb.health == "healthy"


@pytest.mark.parametrize("threshold", [2, 3, 5])
def test_missed_threshold(threshold):
    hb, first = registered(interval_ms=1000, policy=HostPolicy(missed_threshold=threshold))
    hb.receive(response(first), T0)
    take_events(hb)
    for k in range(1, threshold + 1):
        hb.tick(T0 + k)
        assert take_events(hb) == [], f"fault too early at miss {k - 1}"
    hb.tick(T0 + threshold + 1)
    (ev,) = take_events(hb)
    assert ev.kind == "heartbeat_lost" and ev.detail["misses"] == threshold
    assert ev.at - T0 <= (threshold + 1) * 1.0


def test_threshold_counts_consecutive_misses_only():
    hb, first = registered(interval_ms=1000, policy=HostPolicy(missed_threshold=2))
    hb.receive(response(first), T0)
    t = T0
    for k in range(1, 20):
        t = T0 + k
        hb.tick(t)
        (c,) = challenges(take(hb))
        if k % 2 == 0:  # answer every other challenge: never two misses in a row
            hb.receive(response(c), t + 0.1)
    assert [e.kind for e in hb.events if e.is_fault] == []


def test_unhealthy_answer_is_a_fault_at_once_and_healthy_recovers():
    hb, first = registered()
    take_events(hb)
    hb.receive(response(first, "unhealthy", "disk full"), T0 + 0.2)
    (ev,) = take_events(hb)
    assert ev.kind == "unhealthy" and ev.is_fault and ev.at == T0 + 0.2
    assert ev.detail["reason"] == "disk full"
    assert hb.health == "unhealthy" and hb.health_reason == "disk full"
    # still unhealthy: no repeated fault, reason tracked
    hb.tick(T0 + 1)
    answer_all(hb, T0 + 1.1, "unhealthy", "disk still full")
    assert take_events(hb) == []
    assert hb.health_reason == "disk still full"
    hb.tick(T0 + 2)
    answer_all(hb, T0 + 2.1, "healthy")
    (ev,) = take_events(hb)
    assert ev.kind == "recovered" and ev.detail["previous_fault"] == "unhealthy"
    hb.tick(T0 + 3)
    answer_all(hb, T0 + 3.1, "healthy")
    assert take_events(hb) == []


def test_unhealthy_without_reason_gets_a_default_reason():
    hb, first = registered()
    take_events(hb)
    hb.receive(response(first, "unhealthy"), T0)
    (ev,) = take_events(hb)
    assert ev.detail["reason"]


def test_unhealthy_after_heartbeat_lost_switches_fault():
    hb, _ = registered()
    take_events(hb)
    hb.tick(T0 + 1)
    assert [e.kind for e in take_events(hb)] == ["heartbeat_lost"]
    answer_all(hb, T0 + 1.5, "unhealthy", "app down")
    assert [e.kind for e in take_events(hb)] == ["unhealthy"]


@pytest.mark.parametrize("mutate", ["seq", "nonce", "twice", "old"])
def test_stale_or_mismatched_responses_are_ignored(mutate):
    hb, first = registered()
    take_events(hb)
    hb.receive(response(first), T0 + 0.1)
    hb.tick(T0 + 1)
    (c,) = take(hb)
    if mutate == "seq":
        bad = make(
            HEARTBEAT,
            "challenge_response",
            GUEST_TO_HOST,
            seq=c["seq"] + 1,
            nonce=c["nonce"],
            health="healthy",
        )
    elif mutate == "nonce":
        bad = make(
            HEARTBEAT,
            "challenge_response",
            GUEST_TO_HOST,
            seq=c["seq"],
            nonce="ffffffffffffffff",
            health="healthy",
        )
    elif mutate == "twice":
        hb.receive(response(c), T0 + 1.1)
        bad = response(c, "unhealthy")  # a replay must not change health
    else:
        bad = response(first)
    before = hb.stale_responses
    hb.receive(bad, T0 + 1.2)
    assert hb.stale_responses == before + 1
    assert take_events(hb) == []
    hb.tick(T0 + 2)
    kinds = [e.kind for e in take_events(hb)]
    assert kinds == ([] if mutate == "twice" else ["heartbeat_lost"])


def test_response_before_init_raises_not_registered():
    hb = HostHeartbeat(HostPolicy(), Nonces())
    hb.connection_made(T0)
    fake = make(
        HEARTBEAT, "challenge_response", GUEST_TO_HOST, seq=1, nonce="deadbeef", health="healthy"
    )
    with pytest.raises(NotRegistered) as info:
        hb.receive(fake, T0)
    assert info.value.msg_type == "challenge_response"
    assert info.value.code == "not_registered"
    assert hb.events == [] and hb.outbox == []


def test_response_while_suspended_raises_not_registered():
    hb, first = registered()
    hb.suspend(T0, "paused")
    with pytest.raises(NotRegistered):
        hb.receive(response(first), T0 + 0.1)


def test_repeated_init_same_invocation_reacks_without_new_registration():
    hb, first = registered()
    take_events(hb)
    hb.receive(response(first), T0 + 0.1)
    deadline = hb.next_deadline()
    seq = hb.seq
    hb.receive(init(), T0 + 0.5)
    (ack,) = take(hb)
    assert ack.msg_type == "init_ack" and ack["interval_ms"] == 1000
    assert take_events(hb) == []
    assert hb.next_deadline() == deadline and hb.seq == seq  # schedule kept


def test_new_invocation_id_reregisters():
    hb, first = registered()
    take_events(hb)
    hb.receive(init("inv-2", 2000), T0 + 0.5)
    out = take(hb)
    assert [m.msg_type for m in out] == ["init_ack", "challenge"]
    assert out[0]["invocation_id"] == "inv-2" and out[0]["interval_ms"] == 2000
    (ev,) = take_events(hb)
    assert ev.kind == "registered"
    assert ev.detail["invocation_id"] == "inv-2"
    assert ev.detail["previous_invocation_id"] == "inv-1"
    # the old challenge is no longer answerable
    hb.receive(response(first), T0 + 0.6)
    assert hb.stale_responses == 1
    hb.receive(response(out[1]), T0 + 0.6)
    assert hb.responses_ok == 1


def test_exit_gives_exit_no_fault_no_more_challenges():
    hb, first = registered(policy=HostPolicy(restart_timeout_s=5))
    hb.receive(response(first), T0 + 0.1)
    take_events(hb)
    hb.receive(exit_msg(reason="shutdown"), T0 + 0.5)
    (ev,) = take_events(hb)
    assert ev.kind == "exit" and not ev.is_fault
    assert ev.detail["reason"] == "shutdown" and ev.detail["cleared_fault"] is None
    assert hb.state == hb.EXITED
    assert hb.next_deadline() is None
    for k in range(1, 100):
        hb.tick(T0 + k)
    assert take(hb) == [] and take_events(hb) == []
    # a reconnect (e.g. the VM was shut down) does not arm anything either
    hb.connection_lost(T0 + 100)
    hb.connection_made(T0 + 101)
    hb.tick(T0 + 1000)
    assert take(hb) == [] and take_events(hb) == []


def test_exit_while_faulted_clears_the_fault():
    hb, _ = registered()
    take_events(hb)
    hb.tick(T0 + 1)
    take_events(hb)
    hb.receive(exit_msg(), T0 + 1.5)
    (ev,) = take_events(hb)
    assert ev.kind == "exit" and ev.detail["cleared_fault"] == "heartbeat_lost"
    assert hb.health == "healthy"


def test_exit_with_foreign_invocation_id_is_ignored():
    hb, _ = registered()
    take_events(hb)
    hb.receive(exit_msg("someone-else"), T0)
    assert hb.state == hb.MONITORING
    assert take_events(hb) == [] and hb.stale_responses == 1


def test_register_again_after_exit():
    hb, _ = registered()
    hb.receive(exit_msg(), T0)
    take_events(hb)
    hb.receive(init("inv-2"), T0 + 5)
    assert hb.state == hb.MONITORING
    assert [e.kind for e in take_events(hb)] == ["registered"]


@pytest.mark.parametrize("how", ["suspend", "connection_lost"])
def test_suspend_and_resume_produce_no_fault(how):
    hb, first = registered(policy=HostPolicy(restart_timeout_s=3))
    hb.receive(response(first), T0 + 0.1)
    take(hb)
    take_events(hb)
    if how == "suspend":
        hb.suspend(T0 + 0.5, "migrating")
    else:
        hb.connection_lost(T0 + 0.5)
    (ev,) = take_events(hb)
    assert ev.kind == "suspended" and not ev.is_fault
    assert hb.next_deadline() is None
    for k in range(1, 200):
        hb.tick(T0 + k)
    assert take(hb) == [] and take_events(hb) == []
    if how == "connection_lost":
        hb.resume(T0 + 200)  # not connected: nothing happens
        assert hb.outbox == []
        hb.connection_made(T0 + 200)
        hb.receive(init(), T0 + 200.1)
        assert [e.kind for e in take_events(hb)] == ["registered"]
    else:
        hb.resume(T0 + 200)
        (c,) = take(hb)  # still registered: challenged at once
        assert c.msg_type == "challenge"
        hb.receive(response(c), T0 + 200.1)
    hb.tick(T0 + 201)
    answer_all(hb, T0 + 201.1)
    assert [e for e in hb.events if e.is_fault] == []


def test_suspend_twice_emits_once():
    hb, _ = registered()
    take_events(hb)
    hb.suspend(T0, "pause")
    hb.suspend(T0 + 1, "pause")
    assert [e.kind for e in take_events(hb)] == ["suspended"]


def test_resume_unregistered_guest_arms_restart_timeout():
    hb = HostHeartbeat(HostPolicy(restart_timeout_s=10), Nonces())
    hb.connection_made(T0)
    hb.suspend(T0 + 1, "reboot")
    assert hb.next_deadline() is None
    hb.resume(T0 + 2)
    assert hb.state == hb.AWAITING_INIT
    assert hb.next_deadline() == T0 + 12
    hb.tick(T0 + 12)
    assert [e.kind for e in take_events(hb)] == ["restart_timeout"]


def test_resume_unregistered_guest_sends_one_probe_whose_answer_is_refused():
    """Live-migration destination: the guest still thinks it is registered."""
    hb = HostHeartbeat(HostPolicy(restart_timeout_s=10), Nonces())
    hb.connection_made(T0)
    hb.expect_registration(T0, "started")
    hb.resume(T0 + 1)
    probes = [m for m in hb.outbox if m.msg_type == "challenge"]
    assert len(probes) == 1
    with pytest.raises(NotRegistered):
        hb.receive(response(probes[0]), T0 + 1.1)
    assert hb.state == hb.AWAITING_INIT and hb.misses == 0 and hb.events == []
    hb.tick(T0 + 5)  # an unanswered probe is no miss
    assert hb.events == []


def test_restart_timeout_fires_once_without_registration():
    hb = HostHeartbeat(HostPolicy(restart_timeout_s=60), Nonces())
    hb.connection_made(T0)
    assert hb.next_deadline() == T0 + 60
    hb.tick(T0 + 59.999)
    assert hb.events == []
    hb.tick(T0 + 60)
    (ev,) = take_events(hb)
    assert ev.kind == "restart_timeout" and ev.is_fault
    assert ev.detail["timeout_s"] == 60
    for k in range(61, 500, 7):
        hb.tick(T0 + k)
    assert take_events(hb) == []
    assert hb.next_deadline() is None
    # a late registration recovers
    hb.receive(init(), T0 + 500)
    answer_all(hb, T0 + 500.1)
    assert [e.kind for e in take_events(hb)] == ["registered", "recovered"]


def test_restart_timeout_cancelled_by_registration():
    hb = HostHeartbeat(HostPolicy(restart_timeout_s=60), Nonces())
    hb.connection_made(T0)
    hb.receive(init(), T0 + 30)
    answer_all(hb, T0 + 30)
    take_events(hb)
    assert hb.next_deadline() == T0 + 31
    t = T0 + 30
    for _ in range(100):
        t = hb.next_deadline()
        hb.tick(t)
        answer_all(hb, t)
    assert [e for e in take_events(hb) if e.is_fault] == []


def test_reconnect_does_not_rearm_running_restart_timer():
    hb = HostHeartbeat(HostPolicy(restart_timeout_s=60), Nonces())
    hb.connection_made(T0)
    hb.connection_made(T0 + 30)
    assert hb.next_deadline() == T0 + 60


def test_restart_timeout_zero_disables():
    hb = HostHeartbeat(HostPolicy(restart_timeout_s=0), Nonces())
    hb.connection_made(T0)
    assert hb.next_deadline() is None
    hb.tick(T0 + 10**6)
    assert hb.events == []


def test_long_stall_gives_one_challenge_per_tick_and_no_burst():
    hb, first = registered(interval_ms=100)
    hb.receive(response(first), T0)
    take_events(hb)
    hb.tick(T0 + 3600)  # the host process was stopped for an hour
    out = take(hb)
    assert len(out) == 1
    events = take_events(hb)
    assert [e.kind for e in events] == []  # the guest answered the last one
    assert hb.next_deadline() == pytest.approx(T0 + 3600.1)
    (c,) = out
    hb.receive(response(c), T0 + 3600.01)
    # regular cadence resumes: one challenge per interval
    for k in range(1, 20):
        t = hb.next_deadline()
        assert t == pytest.approx(T0 + 3600 + k * 0.1)
        hb.tick(t)
        (c,) = take(hb)
        hb.receive(response(c), t)
    assert [e for e in take_events(hb) if e.is_fault] == []


def test_a_late_tick_gives_the_guest_a_full_interval_from_the_actual_send():
    # Fixed delay, not fixed rate: when the host itself runs late, the challenge
    # it sends late still gets a whole interval before it can count as missed.
    hb, first = registered(interval_ms=1000, now=-1.0)  # clock values may be anything
    hb.receive(response(first), -0.9)
    hb.tick(0.3)  # late by 0.3 s
    take(hb)
    assert hb.next_deadline() == pytest.approx(1.3)
    hb2, first2 = registered(interval_ms=1000, now=5.0)
    hb2.receive(response(first2), 5.1)
    hb2.tick(6.3)
    assert hb2.next_deadline() == pytest.approx(7.3)


def test_tick_at_next_deadline_always_makes_progress():
    hb, _ = registered(interval_ms=100, policy=HostPolicy(restart_timeout_s=5))
    t = T0
    for _ in range(1000):
        d = hb.next_deadline()
        assert d is not None and d > t
        t = d
        hb.tick(t)
        answer_all(hb, t)


def test_nack_from_guest_is_harmless():
    hb, _ = registered()
    take_events(hb)
    hb.receive(make(HEARTBEAT, "nack", GUEST_TO_HOST, orig_msg_type="challenge", log_msg="?"), T0)
    assert hb.events == [] and hb.outbox == [] and hb.state == hb.MONITORING


def test_event_detail_and_fault_kinds():
    assert {"heartbeat_lost", "unhealthy", "restart_timeout", "vm_crashed"} == FAULT_KINDS
    assert HeartbeatEvent("recovered", 1.0).is_fault is False
    assert HeartbeatEvent("unhealthy", 1.0).is_fault is True


# -- property: detection time ----------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    interval_ms=st.integers(1, 70000),
    freeze_intervals=st.floats(0, 30),
    answer_delay=st.floats(0, 0.99),
    threshold=st.integers(1, 3),
    origin=st.floats(-1e6, 1e6),
)
def test_property_detection_within_threshold_plus_one_intervals(
    interval_ms, freeze_intervals, answer_delay, threshold, origin
):
    hb = HostHeartbeat(HostPolicy(missed_threshold=threshold, restart_timeout_s=0), Nonces())
    hb.connection_made(origin)
    hb.receive(init(interval_ms=interval_ms), origin)
    interval = hb.interval_ms / 1000.0
    freeze = origin + freeze_intervals * interval
    last_answered_sent = None
    pending = challenges(take(hb))
    sent_at = {pending[0]["seq"]: origin}
    t = origin
    faults = []
    while True:
        for c in pending:
            answer_at = sent_at[c["seq"]] + answer_delay * interval
            if answer_at < freeze:
                hb.receive(response(c), answer_at)
                last_answered_sent = sent_at[c["seq"]]
        t = hb.next_deadline()
        hb.tick(t)
        pending = challenges(take(hb))
        assert len(pending) == 1
        sent_at[pending[0]["seq"]] = t
        faults += [e for e in take_events(hb) if e.is_fault]
        if faults or t > freeze + (threshold + 5) * interval:
            break
    # a few more intervals: still exactly one fault
    for _ in range(3):
        t = hb.next_deadline()
        hb.tick(t)
        take(hb)
        faults += [e for e in take_events(hb) if e.is_fault]
    assert [e.kind for e in faults] == ["heartbeat_lost"]
    detected = faults[0].at
    reference = origin if last_answered_sent is None else last_answered_sent
    tolerance = 1e-6 * max(1.0, abs(origin))
    assert detected - reference <= (threshold + 1) * interval + tolerance
    # and never before the guest actually stopped answering
    assert detected >= freeze - tolerance


def test_expect_registration_arms_restart_timer_without_fault() -> None:
    hb = HostHeartbeat(HostPolicy(restart_timeout_s=5.0), nonce_source=lambda: "0123abcd")
    hb.connection_made(0.0)
    hb.receive(
        make(HEARTBEAT, "init", GUEST_TO_HOST, invocation_id="a", name="g", interval_ms=100), 0.0
    )
    hb.events.clear()
    hb.expect_registration(1.0, "reboot")
    assert [e.kind for e in hb.events] == ["suspended"]
    hb.tick(5.9)
    assert not any(e.is_fault for e in hb.events)
    hb.receive(
        make(HEARTBEAT, "init", GUEST_TO_HOST, invocation_id="b", name="g", interval_ms=100), 5.95
    )
    hb.tick(6.01)
    assert not any(e.is_fault for e in hb.events)  # registered in time: timer cancelled
    hb.expect_registration(8.0, "reboot")
    hb.tick(13.0)
    assert [e.kind for e in hb.events if e.is_fault] == ["restart_timeout"]


def test_report_fault_then_recovered_after_new_registration() -> None:
    hb = HostHeartbeat(HostPolicy(), nonce_source=lambda: "0123abcd")
    hb.connection_made(0.0)
    hb.report_fault(0.5, "vm_crashed", "domain destroyed", cause="destroyed")
    assert [e.kind for e in hb.events] == ["vm_crashed"]
    assert hb.events[0].detail["cause"] == "destroyed"
    hb.receive(
        make(HEARTBEAT, "init", GUEST_TO_HOST, invocation_id="a", name="g", interval_ms=100), 1.0
    )
    hb.receive(
        make(
            HEARTBEAT,
            "challenge_response",
            GUEST_TO_HOST,
            seq=hb.seq,
            nonce="0123abcd",
            health="healthy",
        ),
        1.01,
    )
    assert [e.kind for e in hb.events][-1] == "recovered"
    with pytest.raises(ValueError):
        hb.report_fault(2.0, "bogus", "x")


def test_first_challenge_after_resume_gets_the_resume_grace() -> None:
    policy = HostPolicy(resume_grace_s=1.0)
    hb = HostHeartbeat(policy, nonce_source=lambda: "0123abcd")
    hb.connection_made(0.0)
    hb.receive(
        make(HEARTBEAT, "init", GUEST_TO_HOST, invocation_id="a", name="g", interval_ms=100), 0.0
    )
    hb.suspend(0.05, "paused")
    hb.resume(2.0)
    assert hb.next_deadline() == pytest.approx(3.1)  # interval + grace
    hb.tick(2.5)
    assert not any(e.is_fault for e in hb.events)
    hb.tick(3.1)
    assert [e.kind for e in hb.events if e.is_fault] == ["heartbeat_lost"]
