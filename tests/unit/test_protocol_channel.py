"""HostChannel and GuestChannel together, in a simulated loop with a fake clock."""

from __future__ import annotations

import itertools
import json
from typing import List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel_support import drain, peek_output, take_output
from guest_ha.protocol import (
    GUEST_TO_HOST,
    HEARTBEAT,
    HOST_TO_GUEST,
    SERVER_GROUP,
    ChannelLimits,
    FrameDecoder,
    GuestChannel,
    GuestHeartbeat,
    HostChannel,
    HostPolicy,
    decode_envelope,
    make,
    validate,
)

pytestmark = pytest.mark.unit


def decode_output(data: bytes, direction: str):
    """Every frame in ``data`` as a validated Message (fails on anything invalid)."""
    out = []
    for item in FrameDecoder().feed(data):
        assert isinstance(item, bytes), item
        out.append(validate(decode_envelope(item), direction))
    return out


def host_channel(now: float, limits: ChannelLimits = None, **policy) -> HostChannel:
    host = HostChannel(HostPolicy(**policy), limits or ChannelLimits(), now)
    host.connection_made(now)
    return host


def init_frame(inv="flood", interval_ms=1000) -> bytes:
    return make(
        HEARTBEAT, "init", GUEST_TO_HOST, invocation_id=inv, name="n", interval_ms=interval_ms
    ).encode()


# -- limits --------------------------------------------------------------------------------


def test_channel_limits_validation():
    ChannelLimits()
    with pytest.raises(ValueError):
        ChannelLimits(error_rate=0)
    with pytest.raises(ValueError):
        ChannelLimits(max_output_bytes=-1)
    with pytest.raises(ValueError):
        ChannelLimits(read_burst_bytes=100, max_frame=4096)


# -- steady state -------------------------------------------------------------------------


@pytest.mark.parametrize(("interval_ms", "seconds"), [(100, 120), (1000, 900), (60000, 4 * 3600)])
def test_steady_heartbeating_has_no_fault(clock, proto, interval_ms, seconds):
    link = proto.Link(clock, interval_ms=interval_ms)
    link.start()
    link.run_for(seconds)
    hb = link.host.heartbeat_view
    assert link.kinds() == ["registered"]
    expected = seconds * 1000 // interval_ms
    assert expected <= hb.challenges_sent <= expected + 1
    assert hb.responses_ok == hb.challenges_sent
    assert hb.stale_responses == 0
    assert hb.health == "healthy" and hb.state == "monitoring"
    counters = link.host.counters
    assert counters["bad_frames"] == counters["nacks_sent"] == counters["rate_limited"] == 0
    assert counters["output_dropped"] == 0
    assert link.guest.bad_frames == 0
    assert link.guest_hb.state == link.guest_hb.REGISTERED
    assert not any("no challenge" in line for line in link.guest_log)  # never went stale
    assert link.host_log == []


def test_clamped_interval_reaches_the_guest(clock, proto):
    link = proto.Link(clock, interval_ms=20)
    link.start()
    assert link.guest_hb.effective_interval_ms == 100
    link.run_for(30)
    assert link.faults() == []


def test_guest_going_silent_is_detected_and_recovers(clock, proto):
    link = proto.Link(clock, interval_ms=500)
    link.start()
    link.run_for(10)
    silent_from = clock.now
    last_ok = link.host.heartbeat_view.last_response_at
    link.guest_muted = True
    link.run_for(5)
    faults = link.faults()
    assert [e.kind for e in faults] == ["heartbeat_lost"]
    assert faults[0].at - silent_from <= 2 * 0.5 + 1e-9
    assert faults[0].at - last_ok <= 2 * 0.5 + 1e-9
    link.guest_muted = False
    link.run_for(5)
    assert link.kinds() == ["registered", "heartbeat_lost", "recovered"]


def test_guest_reports_unhealthy_then_healthy(clock, proto):
    link = proto.Link(clock, interval_ms=1000)
    link.start()
    link.run_for(3.5)
    link.guest_hb.set_health("unhealthy", "nginx down")
    link.run_for(1)
    assert link.kinds() == ["registered", "unhealthy"]
    assert link.events[-1].detail["reason"] == "nginx down"
    link.guest_hb.set_health("healthy")
    link.run_for(3)
    assert link.kinds() == ["registered", "unhealthy", "recovered"]


def test_host_reconnect_reregisters_without_fault(clock, proto):
    link = proto.Link(clock, interval_ms=200)
    link.start()
    link.run_for(5)
    link.host.connection_lost(clock.now)
    link.guest.host_disconnected(clock.now)
    link.run_for(30)
    link.host.connection_made(clock.now)
    link.guest.host_connected(clock.now)
    link.pump()
    link.run_for(30)
    assert link.kinds() == ["registered", "suspended", "registered"]


def test_agent_restart_without_hangup_recovers_by_stale_reinit(clock, proto):
    link = proto.Link(clock, interval_ms=1000, stale_intervals=3)
    link.start()
    link.run_for(10)
    # the compute agent restarts: a brand-new host channel, the guest notices nothing
    link.host = HostChannel(HostPolicy(restart_timeout_s=60), ChannelLimits(), clock.now)
    link.host.connection_made(clock.now)
    link.run_for(20)
    assert [e.kind for e in link.events] == ["registered", "registered"]
    assert link.host.heartbeat_view.state == "monitoring"
    assert any("no challenge" in line for line in link.guest_log)


def test_stale_response_to_new_host_is_nacked_and_guest_reinits(clock, proto):
    link = proto.Link(clock, interval_ms=1000)
    link.start()
    link.run_for(3)
    # deliver a response the old host would have expected to a fresh host
    old_challenge = make(HEARTBEAT, "challenge", HOST_TO_GUEST, seq=99, nonce="0123456789abcdef")
    link.host = host_channel(clock.now)
    link.guest_hb.receive(old_challenge, clock.now)
    link.guest.tick(clock.now)
    link.pump()
    assert link.host.counters["nacks_sent"] == 1
    assert link.host.heartbeat_view.state == "monitoring"  # re-registered at once
    assert [e.kind for e in link.events] == ["registered", "registered"]


def test_guest_exit_is_not_a_fault(clock, proto):
    link = proto.Link(clock, interval_ms=100, policy=HostPolicy(restart_timeout_s=10))
    link.start()
    link.run_for(2)
    link.guest_hb.exit(clock.now, "SIGTERM")
    link.guest.tick(clock.now)
    link.pump()
    sent = link.host.heartbeat_view.challenges_sent
    link.run_for(600)
    assert link.kinds() == ["registered", "exit"]
    assert link.host.heartbeat_view.challenges_sent == sent


def test_restart_timeout_when_guest_never_registers(clock, proto):
    link = proto.Link(clock, policy=HostPolicy(restart_timeout_s=30))
    link.guest_muted = True
    link.start()
    link.run_for(100)
    assert link.kinds() == ["restart_timeout"]


def test_server_group_messages_flow_both_ways(clock, proto):
    link = proto.Link(clock)
    link.start()
    assert link.guest.queue(make(SERVER_GROUP, "status_query", GUEST_TO_HOST, seq=5))
    assert link.guest.queue(make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data={"x": 1}))
    link.pump()
    assert [m.msg_type for m in link.host_pdus] == ["status_query", "broadcast"]
    member = {"uuid": proto.UUID_A, "state": "active"}
    for msg in (
        make(SERVER_GROUP, "status_response", HOST_TO_GUEST, seq=5, data=member),
        make(SERVER_GROUP, "status_response_done", HOST_TO_GUEST, seq=5),
        make(SERVER_GROUP, "broadcast", HOST_TO_GUEST, source_instance=proto.UUID_B, data={"x": 1}),
        make(SERVER_GROUP, "notification", HOST_TO_GUEST, data=member),
    ):
        assert link.host.queue(msg)
    link.pump()
    assert [m.msg_type for m in link.guest_pdus] == [
        "status_response",
        "status_response_done",
        "broadcast",
        "notification",
    ]
    assert link.host.counters["bad_frames"] == 0 and link.guest.bad_frames == 0


# -- nacks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "app", "orig", "code"),
    [
        (b"garbage", HEARTBEAT, "", "malformed_json"),
        (b"[1,2,3]", HEARTBEAT, "", "malformed_json"),
        (b'{"version":1}', HEARTBEAT, "", "invalid_envelope"),
        (
            b'{"version":7,"source_addr":"x","dest_addr":"heartbeat","data":{"msg_type":"init"}}',
            HEARTBEAT,
            "init",
            "unsupported_version",
        ),
        (
            b'{"version":1,"source_addr":"x","dest_addr":"mail","data":{"msg_type":"init"}}',
            HEARTBEAT,
            "init",
            "unknown_address",
        ),
        (
            b'{"version":1,"source_addr":"x","dest_addr":"heartbeat","data":{"msg_type":"challenge",'
            b'"seq":1,"nonce":"deadbeef"}}',
            HEARTBEAT,
            "challenge",
            "unknown_msg_type",
        ),
        (
            b'{"version":1,"source_addr":"x","dest_addr":"heartbeat","data":{"msg_type":"init",'
            b'"invocation_id":"i","name":"n","interval_ms":true}}',
            HEARTBEAT,
            "init",
            "invalid_field",
        ),
        (
            b'{"version":1,"source_addr":"x","dest_addr":"server_group","data":{"msg_type":"broadcast",'
            b'"data":1,"source_instance":"0b7d2f3c-5a4e-4d1b-9c6e-1f2a3b4c5d6e"}}',
            SERVER_GROUP,
            "broadcast",
            "invalid_field",
        ),
        (
            b'{"version":1,"source_addr":"x","dest_addr":"heartbeat","data":{"msg_type":'
            b'"challenge_response","seq":1,"nonce":"deadbeef","health":"healthy"}}',
            HEARTBEAT,
            "challenge_response",
            "not_registered",
        ),
        (b"x" * 5000, HEARTBEAT, "", "frame_too_large"),
        (
            b'{"version":1,"source_addr":"x","dest_addr":"server_group","data":{"msg_type":"\\u0001\\t"}}',
            SERVER_GROUP,
            "  ",
            "unknown_msg_type",
        ),
    ],
    ids=lambda v: v.decode()[:30] if isinstance(v, bytes) else v,
)
def test_malformed_frames_get_a_valid_nack(raw, app, orig, code):
    host = host_channel(0.0)
    host.receive_data(b"\n" + raw + b"\n", 0.0)
    (nack,) = decode_output(take_output(host), HOST_TO_GUEST)
    assert nack.app == app and nack.msg_type == "nack"
    assert nack["orig_msg_type"] == orig
    assert nack["log_msg"].startswith(code + ":")
    assert host.counters["bad_frames"] == host.counters["nacks_sent"] == 1
    (line,) = drain(host, 0.0).log
    assert code in line


def test_nack_reaches_guest_as_a_valid_pdu(clock, proto):
    link = proto.Link(clock)
    link.start()
    link.guest._out += (
        b'\n{"version":1,"source_addr":"x","dest_addr":"heartbeat","data":{"msg_type":"\\u0007"}}\n'
    )
    link.pump()
    assert link.host.counters["nacks_sent"] == 1
    assert link.guest.bad_frames == 0  # the nack itself validated on the guest
    assert any("host nacked" in line for line in link.guest_log)


def test_error_flood_nacks_are_bounded(clock):
    limits = ChannelLimits()
    host = host_channel(clock.now, limits)
    bad = b"\n{not json}\n" * 100
    for _ in range(100):  # 10,000 bad frames within one second
        host.receive_data(bad, clock.now)
        clock.advance(0.01)
    assert host.counters["bad_frames"] == 10_000
    allowed = limits.error_burst + limits.error_rate * 1.0
    assert limits.error_burst <= host.counters["nacks_sent"] <= allowed
    nacks = decode_output(take_output(host), HOST_TO_GUEST)
    assert len(nacks) == host.counters["nacks_sent"]
    log = drain(host, clock.now).log
    assert len(log) <= limits.log_burst + limits.log_rate * 1.0 + 1
    # after the flood, a well-formed message is handled normally
    clock.advance(5)
    host.receive_data(init_frame(), clock.now)
    assert host.heartbeat_view.state == "monitoring"


def test_log_lines_rate_limited_with_suppressed_count(clock):
    limits = ChannelLimits(error_rate=100, error_burst=100, log_rate=1, log_burst=5)
    host = host_channel(clock.now, limits)
    host.receive_data(b"\nbad\n" * 50, clock.now)
    lines = drain(host, clock.now).log
    assert len(lines) == 5
    assert not any("suppressed" in line for line in lines)
    clock.advance(2)
    host.receive_data(b"\nbad again\n", clock.now)
    (line,) = drain(host, clock.now).log
    assert "(45 similar message(s) suppressed)" in line
    host.receive_data(b"\nbad again\n", clock.now)
    (line,) = drain(host, clock.now).log
    assert "suppressed" not in line


def test_guest_nacks_bad_host_frames_but_never_nacks_a_nack(clock):
    guest = GuestChannel(GuestHeartbeat(name="g", interval_ms=1000, invocation_id="i"), clock.now)
    guest.heartbeat.start(clock.now)
    guest.tick(clock.now)
    guest.discard_output()
    guest.receive_data(b"\nnonsense\n", clock.now)
    (nack,) = decode_output(take_output(guest), GUEST_TO_HOST)
    assert nack.msg_type == "nack" and nack["log_msg"].startswith("malformed_json")
    guest.discard_output()
    guest.receive_data(
        b'\n{"version":1,"source_addr":"heartbeat","dest_addr":"heartbeat",'
        b'"data":{"msg_type":"nack","orig_msg_type":5}}\n',
        clock.now,
    )
    assert not guest.wants_write
    assert guest.bad_frames == 2
    # and a flood of junk from the host is answered at a bounded rate
    guest.receive_data(b"\njunk\n" * 10_000, clock.now)
    assert len(decode_output(take_output(guest), GUEST_TO_HOST)) <= 10
    assert len(drain(guest).log) <= 6


def test_two_garbage_spewing_ends_do_not_storm(clock, proto):
    link = proto.Link(clock)
    link.start()
    for _ in range(20):
        link.guest._out += b"\n{]\n" * 50
        link.host._out += b"\n{]\n" * 50
        link.pump()
        clock.advance(0.05)
    assert link.host.counters["nacks_sent"] <= 10 + 5 * 1.0 + 1
    assert link.guest.bad_frames >= 1000


# -- rate limits ------------------------------------------------------------------------------


def test_heartbeat_flood_is_rate_limited_and_other_guest_unaffected(proto):
    clock = proto.FakeClock(0.0)
    limits = ChannelLimits()
    flooder = host_channel(clock.now, limits)
    good = proto.Link(clock, interval_ms=100)
    good.start()
    frames = init_frame() * 10
    sent = 0
    for _ in range(1000):  # 10 s at 1000 inits per second
        flooder.receive_data(frames, clock.now)
        sent += 10
        take_output(flooder)
        good.run_for(0.01)
    limited = flooder.counters["rate_limited"]
    accepted = sent - limited
    assert 0 < accepted <= limits.heartbeat_burst + limits.heartbeat_rate * 10 + 1
    assert limited >= sent - (limits.heartbeat_burst + limits.heartbeat_rate * 10 + 1)
    assert flooder.counters["frames_in"] == accepted
    assert flooder.counters["nacks_sent"] <= limits.error_burst + limits.error_rate * 10 + 1
    # the well-behaved guest on its own channel saw nothing of it
    assert good.faults() == []
    assert good.kinds() == ["registered"]
    assert good.host.counters["rate_limited"] == 0
    assert good.host.heartbeat_view.responses_ok >= 99


def test_server_group_flood_rate_limited_but_heartbeat_not_starved(clock, proto):
    link = proto.Link(clock, interval_ms=100)
    link.start()
    query = make(SERVER_GROUP, "status_query", GUEST_TO_HOST, seq=1).encode()
    for _ in range(500):
        link.host.receive_data(query * 20, clock.now)
        link.run_for(0.02)
    assert link.host.counters["rate_limited"] > 0
    limits = link.host.limits
    assert len(link.host_pdus) <= (limits.server_group_burst + limits.server_group_rate * 10 + 1)
    assert link.faults() == []


def test_read_allowance_drops_to_zero_under_byte_flood(clock):
    limits = ChannelLimits()
    host = host_channel(clock.now, limits)
    assert host.read_allowance(clock.now) == limits.read_burst_bytes
    assert host.resume_reading_at(clock.now) == clock.now
    host.receive_data(b"A" * (limits.read_burst_bytes + 10_000), clock.now)
    assert host.read_allowance(clock.now) == 0
    resume = host.resume_reading_at(clock.now)
    assert resume > clock.now
    assert resume == pytest.approx(clock.now + limits.max_frame / limits.read_bytes_per_s)
    assert host.read_allowance(resume) >= limits.max_frame
    assert host.decoder.buffered <= limits.max_frame


def test_read_allowance_sustained_rate(clock):
    limits = ChannelLimits()
    host = host_channel(clock.now, limits)
    total = 0
    for _ in range(1000):  # a shell that reads exactly what it is allowed, for 10 s
        allowed = host.read_allowance(clock.now)
        host.receive_data(b"\n" * allowed, clock.now)
        total += allowed
        clock.advance(0.01)
    assert total <= limits.read_burst_bytes + limits.read_bytes_per_s * 10 + 1


def test_host_output_buffer_bounded(clock):
    limits = ChannelLimits(max_output_bytes=2000)
    host = host_channel(clock.now, limits)
    for k in range(300):  # the shell never manages to write anything
        host.receive_data(init_frame(inv=f"i{k}") + b"\nbad\n", clock.now)
        host.tick(clock.now)
        clock.advance(0.1)
        assert len(peek_output(host)) <= limits.max_output_bytes
    assert host.counters["output_dropped"] > 0
    # what is buffered is whole frames only
    decode_output(peek_output(host), HOST_TO_GUEST)
    assert host.wants_write
    take_output(host)
    assert not host.wants_write


def test_guest_output_buffer_bounded(clock):
    guest = GuestChannel(GuestHeartbeat(name="g", interval_ms=100, invocation_id="i"), clock.now)
    guest.heartbeat.start(clock.now)
    challenge = make(HEARTBEAT, "challenge", HOST_TO_GUEST, seq=1, nonce="deadbeef").encode()
    for _ in range(200):
        guest.receive_data(challenge * 50, clock.now)
        assert len(peek_output(guest)) <= guest.max_output_bytes
    big = make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data="x" * 3000)
    assert guest.queue(big) is False
    guest.discard_output()
    assert guest.queue(big) is True


def test_partial_output_write(clock):
    host = host_channel(clock.now)
    host.receive_data(init_frame(), clock.now)
    offered: List[bytes] = []

    def write_five(data: bytes) -> int:
        offered.append(data)
        return 5

    assert host.send_output(write_five) == 5
    assert take_output(host) == offered[0][5:]


def test_a_failed_write_leaves_the_output_queued(clock):
    host = host_channel(clock.now)
    host.receive_data(init_frame(), clock.now)
    queued = peek_output(host)

    def full(data: bytes) -> int:
        raise BlockingIOError

    with pytest.raises(BlockingIOError):
        host.send_output(full)
    assert queued and take_output(host) == queued
    assert host.send_output(full) == 0  # nothing queued: write is not called


def test_queue_refused_while_disconnected(clock):
    host = HostChannel(HostPolicy(), ChannelLimits(), clock.now)
    msg = make(SERVER_GROUP, "status_response_done", HOST_TO_GUEST, seq=1)
    assert host.queue(msg) is False
    host.connection_made(clock.now)
    assert host.queue(msg) is True
    host.connection_lost(clock.now)
    assert not host.wants_write
    assert host.queue(msg) is False


def test_connection_lost_discards_partial_input(clock):
    host = host_channel(clock.now)
    host.receive_data(b'\n{"version":1,"sou', clock.now)
    assert host.decoder.buffered > 0
    host.connection_lost(clock.now)
    host.connection_made(clock.now)
    assert host.decoder.buffered == 0
    host.receive_data(init_frame(), clock.now)
    assert host.counters["bad_frames"] == 0


def test_next_deadline_follows_heartbeat(clock):
    host = host_channel(clock.now, restart_timeout_s=5)
    assert host.next_deadline() == clock.now + 5
    host.receive_data(init_frame(interval_ms=100), clock.now)
    assert host.next_deadline() == pytest.approx(clock.now + 0.1)


# -- property: any chunking of the byte pipe ---------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=1, max_size=30), st.integers(100, 2000))
def test_property_chunked_delivery_never_faults(proto, chunk_sizes, interval_ms):
    """Bytes delivered in arbitrary fragments still heartbeat without a fault."""
    clock = proto.FakeClock(0.0)
    link = proto.Link(clock, interval_ms=interval_ms)
    sizes = itertools.cycle(chunk_sizes)

    def pump() -> None:
        for _ in range(10_000):
            moved = False
            for src, dst in ((link.host, link.guest), (link.guest, link.host)):

                def write(data: bytes, dst=dst) -> int:
                    n = min(len(data), next(sizes))
                    dst.receive_data(data[:n], clock.now)
                    return n

                if src.send_output(write):
                    moved = True
            link.collect()
            if not moved:
                return

    link.pump = pump
    link.start()
    link.run_for(20 * interval_ms / 1000)
    assert link.kinds() == ["registered"]
    assert link.host.counters["bad_frames"] == 0


def test_take_events_and_log_drain(clock, proto):
    link = proto.Link(clock)
    link.start()
    assert drain(link.host, clock.now).events == []  # already drained by the link
    assert link.host_log == []


def test_messages_encode_to_compact_json(clock):
    host = host_channel(clock.now)
    host.receive_data(init_frame(), clock.now)
    for item in FrameDecoder().feed(take_output(host)):
        obj = json.loads(item)
        assert set(obj) == {"version", "source_addr", "dest_addr", "data"}
        assert b" " not in item


def test_resume_sends_the_challenge_at_once_after_flush() -> None:
    from guest_ha.protocol import ChannelLimits, HostChannel, HostPolicy
    from guest_ha.protocol.messages import GUEST_TO_HOST, make

    host = HostChannel(HostPolicy(), ChannelLimits(), 0.0)
    host.connection_made(0.0)
    init = make("heartbeat", "init", GUEST_TO_HOST, invocation_id="a", name="g", interval_ms=100)
    host.receive_data(init.encode(), 0.0)
    take_output(host)
    host.suspend(0.05, "paused")
    host.resume(1.0)
    assert b'"msg_type":"challenge"' in take_output(host)
