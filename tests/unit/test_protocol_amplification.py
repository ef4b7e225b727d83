"""Per-VM limits on what a guest can make the host do outside its own channel:
nacks, log lines, events (docs/protocol.md §7, §8), and the reconnect backoff."""

from __future__ import annotations

import logging

import pytest

from channel_support import drain, take_output
from guest_ha.compute.backoff import ReconnectBackoff
from guest_ha.protocol import (
    GUEST_TO_HOST,
    HEARTBEAT,
    HOST_TO_GUEST,
    SERVER_GROUP,
    ChannelLimits,
    FrameDecoder,
    HostChannel,
    HostPolicy,
    decode_envelope,
    make,
    validate,
)
from guest_ha.protocol.messages import nack

pytestmark = pytest.mark.unit


def host(now: float = 0.0, **limits) -> HostChannel:
    channel = HostChannel(HostPolicy(), ChannelLimits(**limits), now)
    channel.connection_made(now)
    return channel


def init(inv: str) -> bytes:
    return make(
        HEARTBEAT, "init", GUEST_TO_HOST, invocation_id=inv, name="n", interval_ms=1000
    ).encode()


def sent(channel: HostChannel):
    out = [
        validate(decode_envelope(f), HOST_TO_GUEST)
        for f in FrameDecoder().feed(take_output(channel))
    ]
    return out


def test_application_rejections_share_the_nack_limit_and_are_counted():
    channel = host()
    answered = sum(
        channel.reject(i / 1000, SERVER_GROUP, "status_query", "not_enabled", "off")
        for i in range(200)
    )
    assert answered == 10  # burst 10 within 0.2 s
    assert channel.counters["nacks_sent"] == 10
    assert channel.counters["nacks_suppressed"] == 190
    assert channel.nacks_by_code == {"not_enabled": 10}
    nacks = [m for m in sent(channel) if m.msg_type == "nack"]
    assert len(nacks) == 10 and nacks[0]["log_msg"].startswith("not_enabled: ")
    # One second later about five more are allowed (5/s).
    again = sum(
        channel.reject(1.2 + i / 1000, SERVER_GROUP, "x", "not_enabled", "off") for i in range(50)
    )
    assert 5 <= again <= 6


def test_controller_nacks_go_through_the_same_limit():
    channel = host()
    msg = nack(SERVER_GROUP, "status_query", "not_in_server_group: no group")
    assert sum(channel.relay_nack(0.0, msg) for _ in range(100)) == 10
    assert channel.nacks_by_code == {"not_in_server_group": 10}
    assert channel.counters["nacks_suppressed"] == 90


def test_log_lines_are_limited_at_every_level():
    channel = host()
    for i in range(100):
        channel.log(i / 100, f"info {i}", logging.INFO)
        channel.log(i / 100, f"debug {i}", logging.DEBUG)
    records = drain(channel, 1.0).records
    # burst 5 + 1/s over one second, whatever the level (plus the misbehaving line: none here)
    assert 5 <= len(records) <= 7
    assert {level for level, _ in records} <= {logging.INFO, logging.DEBUG}


def test_reinit_churn_is_limited_with_one_misbehaving_event():
    channel = host()
    kinds = []
    for i in range(600):  # 10 new registrations per second for a minute
        now = i / 10
        channel.receive_data(init(f"inv{i}"), now)
        kinds += [e.kind for e in drain(channel, now).events]
    assert kinds.count("misbehaving") == 1
    registered = kinds.count("registered")
    assert 4 <= registered <= 4 + 4 + 1  # burst 4, then 4 per minute
    assert channel.counters["events_suppressed"] == 600 - registered
    assert channel.is_misbehaving(60.0)
    # The episode ends after a quiet minute; the next hit raises a new event.
    assert not channel.is_misbehaving(200.0)


def test_faults_always_pass_and_flapping_is_coalesced():
    channel = host()
    hb = channel._heartbeat
    out = []
    for i in range(100):  # unhealthy / recovered flapping, once a second
        hb._set_health("unhealthy" if i % 2 == 0 else "healthy", float(i), "flap")
        out += [e.kind for e in drain(channel, float(i)).events]
    assert out[0] == "unhealthy"
    assert out.count("recovered") <= 4 + 100 / 60 * 4 + 1
    # Never two faults of the same kind in a row without a recovery in between,
    # and the controller's last view matches the guest's last state.
    reported = [k for k in out if k in ("unhealthy", "recovered")]
    assert all(a != b for a, b in zip(reported, reported[1:]))
    held = channel._pending_recovery is not None
    assert reported[-1] == "recovered" or hb.health == "unhealthy" or held


def test_a_held_recovery_is_reported_when_the_limit_allows():
    channel = host(event_burst=1.0)
    hb = channel._heartbeat
    hb._set_health("unhealthy", 0.0, "x")
    hb._set_health("healthy", 0.0, "")
    assert [e.kind for e in drain(channel, 0.0).events] == ["unhealthy", "recovered"]
    hb._set_health("unhealthy", 1.0, "x")
    hb._set_health("healthy", 1.0, "")
    assert [e.kind for e in drain(channel, 1.0).events] == ["unhealthy", "misbehaving"]
    assert drain(channel, 14.0).events == []  # 4/min: a token every 15 s
    assert [e.kind for e in drain(channel, 16.0).events] == ["recovered"]


def test_a_different_fault_releases_the_held_recovery_first():
    channel = host(event_burst=1.0)
    hb = channel._heartbeat
    hb._set_health("unhealthy", 0.0, "x")
    hb._set_health("healthy", 0.0, "")
    hb._set_health("unhealthy", 0.0, "x")
    hb._set_health("healthy", 0.0, "")
    hb._set_health("heartbeat_lost", 0.0, "y")
    kinds = [e.kind for e in drain(channel, 0.0).events]
    assert kinds[:4] == ["unhealthy", "recovered", "unhealthy", "recovered"][:2] + kinds[2:4]
    assert "heartbeat_lost" in kinds and kinds.index("heartbeat_lost") > kinds.index("recovered")


def test_backoff_grows_until_the_connection_is_stable():
    backoff = ReconnectBackoff(0.1, 5.0, stable_s=10.0)
    now, delays = 0.0, []
    for _ in range(10):  # accept and close at once
        backoff.connected(now)
        delay = backoff.lost(now)
        delays.append(delay)
        now += delay
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8] and delays[-1] == 5.0
    backoff.connected(now)
    assert backoff.lost(now + 11.0) == 0.1  # stayed up long enough
    assert backoff.failed() == 0.2
    backoff.reset()
    assert backoff.failed() == 0.1
    with pytest.raises(ValueError):
        ReconnectBackoff(0, 1, 1)


def test_exit_that_clears_a_fault_shares_the_budget():
    """A guest that faults, exits (clearing the fault) and re-registers every second."""
    from guest_ha.protocol.heartbeat import HeartbeatEvent

    channel = host()
    out = []
    for i in range(120):
        now = float(i)
        channel._heartbeat.events += [
            HeartbeatEvent("heartbeat_lost", now, {}),
            HeartbeatEvent("exit", now, {"cleared_fault": "heartbeat_lost"}),
            HeartbeatEvent("registered", now, {}),
        ]
        out += [e.kind for e in drain(channel, now).events]
    # Budget: burst 4 + 4/min over two minutes = 12 tokens for exits and
    # registrations; each fault that passes follows a clear that passed.
    assert len(out) <= 2 * 12 + 1 + 1, out
    assert out.count("misbehaving") == 1
    kinds = [k for k in out if k in ("heartbeat_lost", "exit")]
    assert all(a != b for a, b in zip(kinds, kinds[1:]))  # never a fault reported twice


def test_a_registration_after_a_hypervisor_restart_is_not_churn():
    """Registrations the hypervisor announced (a reboot, a start) pass even when the
    guest's event budget is spent; unannounced re-registrations do not."""
    channel = host(event_burst=1.0, event_rate_per_min=0.001)
    channel.receive_data(init("a" * 32), 0.0)
    assert [e.kind for e in drain(channel, 0.0).events] == ["registered"]
    channel.receive_data(init("b" * 32), 1.0)  # churn: over the budget
    assert "registered" not in [e.kind for e in drain(channel, 1.0).events]
    channel.expect_registration(2.0, "reboot")
    channel.receive_data(init("c" * 32), 3.0)
    assert "registered" in [e.kind for e in drain(channel, 3.0).events]
