"""GuestHeartbeat: the guest daemon's heartbeat machine, driven by a fake clock."""

from __future__ import annotations

import pytest

from guest_ha.protocol import (
    HEARTBEAT,
    HOST_TO_GUEST,
    GuestHeartbeat,
    InvalidField,
    Message,
    make,
)

pytestmark = pytest.mark.unit

T0 = 500.0


def guest(**kw) -> GuestHeartbeat:
    args = {"name": "web-1", "interval_ms": 1000, "invocation_id": "inv-1"}
    args.update(kw)
    return GuestHeartbeat(**args)


def take(g: GuestHeartbeat):
    out, g.outbox = g.outbox, []
    return out


def types(msgs):
    return [m.msg_type for m in msgs]


def ack(inv="inv-1", interval_ms=1000) -> Message:
    return make(HEARTBEAT, "init_ack", HOST_TO_GUEST, invocation_id=inv, interval_ms=interval_ms)


def challenge(seq=1, nonce="00000000deadbeef") -> Message:
    return make(HEARTBEAT, "challenge", HOST_TO_GUEST, seq=seq, nonce=nonce)


def host_nack(orig) -> Message:
    return make(HEARTBEAT, "nack", HOST_TO_GUEST, orig_msg_type=orig, log_msg="not_registered")


def registered_guest(**kw) -> GuestHeartbeat:
    g = guest(**kw)
    g.start(T0)
    g.receive(ack(interval_ms=g.interval_ms), T0 + 0.01)
    take(g)
    g.events.clear()
    return g


def test_bad_configuration_rejected_early():
    with pytest.raises(InvalidField):
        guest(invocation_id="has space")
    with pytest.raises(InvalidField):
        guest(interval_ms=0)
    with pytest.raises(InvalidField):
        guest(corrective_action="explode")
    with pytest.raises(InvalidField):
        guest(name="x" * 65)


def test_idle_until_started():
    g = guest()
    assert g.state == g.IDLE
    g.tick(T0)
    g.receive(challenge(), T0)
    assert g.outbox == [] and g.next_deadline() is None


def test_start_sends_init():
    g = guest(corrective_action="reboot")
    g.start(T0)
    (init,) = take(g)
    assert init.msg_type == "init"
    assert init.fields == {
        "invocation_id": "inv-1",
        "name": "web-1",
        "interval_ms": 1000,
        "corrective_action": "reboot",
    }
    assert g.state == g.REGISTERING
    assert g.next_deadline() == T0 + 1.0


def test_init_without_corrective_action_omits_it():
    g = guest()
    g.start(T0)
    (init,) = take(g)
    assert "corrective_action" not in init.fields


def test_init_retried_every_init_retry_s_while_registering():
    g = guest(init_retry_s=2.5)
    g.start(T0)
    take(g)
    sent_at = []
    t = T0
    while t < T0 + 25:
        t += 0.5
        g.tick(t)
        if take(g):
            sent_at.append(t)
    assert sent_at == [T0 + 2.5 * k for k in range(1, 11)]
    assert g.state == g.REGISTERING


def test_no_init_while_host_disconnected_then_reinit_on_connect():
    g = guest()
    g.host_disconnected(T0 - 1)
    g.start(T0)
    assert take(g) == []
    for k in range(1, 30):
        g.tick(T0 + k)
    assert take(g) == []
    g.host_connected(T0 + 30)
    assert types(take(g)) == ["init"]
    assert g.state == g.REGISTERING


def test_host_connected_while_registered_reregisters():
    g = registered_guest()
    g.host_disconnected(T0 + 1)
    g.host_connected(T0 + 2)
    assert types(take(g)) == ["init"]
    assert g.state == g.REGISTERING


def test_host_connected_while_idle_or_exited_sends_nothing():
    g = guest()
    g.host_connected(T0)
    assert g.outbox == [] and g.state == g.IDLE
    g = registered_guest()
    g.exit(T0 + 1)
    take(g)
    g.host_connected(T0 + 2)
    g.tick(T0 + 100)
    assert g.outbox == []


def test_init_ack_registers_and_adopts_effective_interval():
    g = guest(interval_ms=50)
    g.start(T0)
    take(g)
    g.receive(ack(interval_ms=100), T0 + 0.1)
    assert g.state == g.REGISTERED
    assert g.effective_interval_ms == 100
    assert any("registered" in e for e in g.events)
    # no init retries once registered (stale only after 3 * 0.1 + 0.5 s)
    g.tick(T0 + 0.75)
    assert g.outbox == []


def test_init_ack_for_other_invocation_ignored():
    g = guest()
    g.start(T0)
    take(g)
    g.receive(ack(inv="other"), T0)
    assert g.state == g.REGISTERING


def test_repeated_init_ack_logs_once():
    g = guest()
    g.start(T0)
    g.receive(ack(), T0)
    g.receive(ack(), T0 + 0.5)
    assert len([e for e in g.events if e.startswith("registered")]) == 1


@pytest.mark.parametrize("health", ["healthy", "unhealthy"])
def test_answers_challenges_with_current_health(health):
    g = registered_guest()
    g.set_health(health, "why" * 100)
    g.receive(challenge(7, "abcdef0123456789"), T0 + 1)
    (resp,) = take(g)
    assert resp.msg_type == "challenge_response"
    assert resp["seq"] == 7 and resp["nonce"] == "abcdef0123456789"
    assert resp["health"] == health
    assert resp["reason"] == ("why" * 100)[:256]
    assert g.challenges_answered == 1
    # the response is a PDU the host accepts
    from guest_ha.protocol import GUEST_TO_HOST, validate
    from guest_ha.protocol.envelope import decode_envelope

    assert validate(decode_envelope(resp.encode()[1:-1]), GUEST_TO_HOST) == resp


def test_health_changes_are_reflected_in_next_answer():
    g = registered_guest()
    g.set_health("unhealthy", "db down")
    g.receive(challenge(1), T0 + 1)
    g.set_health("healthy")
    g.receive(challenge(2), T0 + 2)
    a, b = take(g)
    assert (a["health"], a["reason"]) == ("unhealthy", "db down")
    assert (b["health"], b["reason"]) == ("healthy", "")


def test_set_health_rejects_unknown_state():
    with pytest.raises(ValueError):
        guest().set_health("meh")


def test_challenge_before_init_ack_counts_as_registered():
    g = guest()
    g.start(T0)
    take(g)
    g.receive(challenge(), T0 + 0.1)
    assert types(take(g)) == ["challenge_response"]
    assert g.state == g.REGISTERED


def test_reregisters_after_stale_intervals_without_challenges():
    g = registered_guest(interval_ms=1000, stale_intervals=3.0)
    t = T0 + 0.01
    for k in range(1, 6):  # challenges keep it registered
        t = T0 + k
        g.receive(challenge(k), t)
        g.tick(t + 0.5)
    take(g)
    assert g.state == g.REGISTERED
    # then the host goes quiet
    deadline = g.next_deadline()
    assert deadline == pytest.approx(t + 3.0 + 0.5)
    g.tick(deadline - 0.01)
    assert g.outbox == [] and g.state == g.REGISTERED
    g.tick(deadline)
    assert types(take(g)) == ["init"]
    assert g.state == g.REGISTERING
    assert any("no challenge" in e for e in g.events)


def test_stale_uses_effective_interval():
    g = guest(interval_ms=100, stale_intervals=2)
    g.start(T0)
    g.receive(ack(interval_ms=5000), T0)  # host clamped it up
    take(g)
    g.tick(T0 + 5)
    assert g.outbox == []
    assert g.next_deadline() == pytest.approx(T0 + 10.5)


def test_tick_at_next_deadline_always_makes_progress():
    g = guest(interval_ms=1000, stale_intervals=3.0)
    g.start(0.0)
    g.receive(ack(), 0.0)
    for _ in range(50):
        deadline = g.next_deadline()
        g.tick(deadline)
        assert g.next_deadline() > deadline, f"tick({deadline}) did nothing"
        if g.state == g.REGISTERING:
            g.receive(ack(), deadline)
        take(g)


@pytest.mark.parametrize("origin", [0.0, 0.1, 1e9 + 0.3, 12345.678])
def test_stale_deadline_is_exact(origin):
    g = guest(interval_ms=700, stale_intervals=2.5)
    g.start(origin)
    g.receive(challenge(), origin)
    take(g)
    g.tick(g.next_deadline())
    assert g.state == g.REGISTERING


def test_nack_of_challenge_response_causes_reinit():
    g = registered_guest()
    g.receive(challenge(1), T0 + 1)
    take(g)
    g.receive(host_nack("challenge_response"), T0 + 1.01)
    assert types(take(g)) == ["init"]
    assert g.state == g.REGISTERING
    assert any("nacked challenge_response" in e for e in g.events)


def test_nack_of_init_reregisters_on_retry_timer():
    g = guest(init_retry_s=2)
    g.start(T0)
    take(g)
    g.receive(host_nack("init"), T0 + 0.1)
    assert g.outbox == [] and g.state == g.REGISTERING
    g.tick(T0 + 2)
    assert types(take(g)) == ["init"]


def test_nack_of_other_messages_only_logged():
    g = registered_guest()
    g.receive(host_nack("frame"), T0 + 1)
    assert g.outbox == [] and g.state == g.REGISTERED
    assert g.events


def test_exit_sends_exit_pdu():
    g = registered_guest()
    g.exit(T0 + 5, "SIGTERM" + "x" * 300)
    (msg,) = take(g)
    assert msg.msg_type == "exit"
    assert msg["invocation_id"] == "inv-1"
    assert msg["reason"] == ("SIGTERM" + "x" * 300)[:256]
    assert g.state == g.EXITED
    assert g.next_deadline() is None
    g.receive(challenge(), T0 + 6)
    g.tick(T0 + 100)
    assert g.outbox == []


def test_exit_while_registering_also_sends_exit():
    g = guest()
    g.start(T0)
    take(g)
    g.exit(T0)
    assert types(take(g)) == ["exit"]


def test_exit_before_start_sends_nothing():
    g = guest()
    g.exit(T0)
    assert g.outbox == [] and g.state == g.EXITED
