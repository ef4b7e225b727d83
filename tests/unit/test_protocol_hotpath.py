"""The heartbeat fast paths give exactly what the general path gives, or defer to it."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest_ha.protocol import GUEST_TO_HOST, HEARTBEAT, HOST_TO_GUEST, Message, ProtocolError
from guest_ha.protocol.envelope import decode_envelope
from guest_ha.protocol.hotpath import decode_challenge, decode_challenge_response, encode_fast
from guest_ha.protocol.messages import validate

pytestmark = pytest.mark.unit

SEQS = st.one_of(st.integers(min_value=-5, max_value=2**53 + 5), st.booleans())
NONCES = st.one_of(st.from_regex(r"[0-9a-f]{6,66}", fullmatch=True), st.text(max_size=70))
REASONS = st.text(max_size=260)
HEALTH = st.sampled_from(["healthy", "unhealthy", "Healthy", ""])


def _general(frame: bytes, direction: str):
    """The general path's Message, or the ProtocolError it raises."""
    try:
        return validate(decode_envelope(frame), direction)
    except ProtocolError as exc:
        return type(exc)


@settings(max_examples=400)
@given(seq=SEQS, nonce=NONCES, health=HEALTH, reason=REASONS)
def test_challenge_response_round_trip(seq, nonce, health, reason) -> None:
    msg = Message(
        HEARTBEAT,
        "challenge_response",
        {"seq": seq, "nonce": nonce, "health": health, "reason": reason},
    )
    fast = encode_fast(msg)
    slow = msg.encode()
    if fast is not None:
        assert fast == slow
    frame = slow.strip(b"\n")
    decoded = decode_challenge_response(frame)
    if decoded is not None:
        assert decoded == _general(frame, GUEST_TO_HOST)


@settings(max_examples=300)
@given(seq=SEQS, nonce=NONCES)
def test_challenge_round_trip(seq, nonce) -> None:
    msg = Message(HEARTBEAT, "challenge", {"seq": seq, "nonce": nonce})
    fast = encode_fast(msg)
    if fast is not None:
        assert fast == msg.encode()
    frame = msg.encode().strip(b"\n")
    decoded = decode_challenge(frame)
    if decoded is not None:
        assert decoded == _general(frame, HOST_TO_GUEST)


def test_canonical_frames_take_the_fast_path() -> None:
    challenge = Message(HEARTBEAT, "challenge", {"seq": 7, "nonce": "0123456789abcdef"})
    assert encode_fast(challenge) == challenge.encode()
    assert decode_challenge(challenge.encode().strip()) == challenge
    response = Message(
        HEARTBEAT,
        "challenge_response",
        {"seq": 7, "nonce": "0123456789abcdef", "health": "unhealthy", "reason": "disk full"},
    )
    assert encode_fast(response) == response.encode()
    assert decode_challenge_response(response.encode().strip()) == response


@pytest.mark.parametrize(
    "data",
    [
        # What the fast path leaves to the general one: duplicate keys, other key
        # orders, leading zeros, huge or negative numbers, escapes, extra fields.
        '{"msg_type":"challenge_response","seq":1,"seq":2,"nonce":"0123456789abcdef",'
        '"health":"healthy","reason":""}',
        '{"msg_type":"challenge_response","nonce":"0123456789abcdef","seq":1,'
        '"health":"healthy","reason":""}',
        '{"msg_type":"challenge_response","seq":01,"nonce":"0123456789abcdef",'
        '"health":"healthy","reason":""}',
        '{"msg_type":"challenge_response","seq":9007199254740992,"nonce":"0123456789abcdef",'
        '"health":"healthy","reason":""}',
        '{"msg_type":"challenge_response","seq":-1,"nonce":"0123456789abcdef",'
        '"health":"healthy","reason":""}',
        '{"msg_type":"challenge_response","seq":1,"nonce":"0123456789abcdef",'
        '"health":"healthy","reason":"a\\u0001"}',
        '{"msg_type":"challenge_response","seq":1,"nonce":"0123456789abcdef",'
        '"health":"healthy","reason":"","x":1}',
    ],
)
def test_non_canonical_frames_take_the_general_path(data: str) -> None:
    frame = (
        '{"version":1,"source_addr":"heartbeat","dest_addr":"heartbeat","data":' + data + "}"
    ).encode()
    assert decode_challenge_response(frame) is None


def test_fast_path_frame_parses_as_json() -> None:
    msg = Message(HEARTBEAT, "challenge", {"seq": 0, "nonce": "deadbeef"})
    frame = encode_fast(msg)
    assert frame is not None
    assert json.loads(frame)["data"] == {"msg_type": "challenge", "seq": 0, "nonce": "deadbeef"}
