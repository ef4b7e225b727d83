"""The normative points of docs/protocol.md that leave an implementer no guesswork:
nesting depth, number range, duplicate keys, byte-order mark, the compact
encoding byte by byte, the effective interval before ``init_ack``, and nacks of
bad versions."""

from __future__ import annotations

import json

import pytest

from channel_support import take_output
from guest_ha.protocol import (
    GUEST_TO_HOST,
    HEARTBEAT,
    HOST_TO_GUEST,
    SERVER_GROUP,
    ChannelLimits,
    FrameDecoder,
    GuestHeartbeat,
    HostChannel,
    HostPolicy,
    ProtocolError,
    decode_envelope,
    make,
    validate,
)
from guest_ha.protocol.envelope import MAX_JSON_DEPTH, parse_json_object

pytestmark = pytest.mark.unit


def envelope_with(data_members: str, version: str = "1") -> bytes:
    return (
        '{"version":' + version + ',"source_addr":"heartbeat","dest_addr":"heartbeat",'
        '"data":{"msg_type":"exit","invocation_id":"a"' + data_members + "}}"
    ).encode()


def code_of(payload: bytes) -> str:
    try:
        validate(decode_envelope(payload), GUEST_TO_HOST)
    except ProtocolError as exc:
        return exc.code
    return "ok"


# -- nesting depth -----------------------------------------------------------------------
def nested(depth_of_field: int) -> str:
    """An unknown field whose innermost array is at ``depth_of_field`` (envelope = 1,
    data = 2, so the field's outer array is at 3)."""
    n = depth_of_field - 2
    return ',"x":' + "[" * n + "]" * n


def test_depth_limit_is_exactly_32_and_strings_do_not_count():
    assert MAX_JSON_DEPTH == 32
    assert code_of(envelope_with(nested(32))) == "ok"
    assert code_of(envelope_with(nested(33))) == "malformed_json"
    assert code_of(envelope_with(nested(3000 // 2))) == "malformed_json"
    assert code_of(envelope_with(',"s":"' + "[" * 500 + '{\\"' + "}" * 3 + '"')) == "ok"


# -- numbers ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("literal", "code"),
    [
        ("9007199254740991", "ok"),
        ("-9007199254740991", "ok"),
        ("9007199254740992", "malformed_json"),
        ("-9007199254740992", "malformed_json"),
        ("9" * 400, "malformed_json"),
        ("1.7976931348623157e308", "ok"),
        ("1e309", "malformed_json"),
        ("-1e400", "malformed_json"),
        ("1e-400", "ok"),  # underflows to 0: finite
        ("12345678901234567890.0", "ok"),  # a float, not an integer literal
    ],
)
def test_number_range(literal, code):
    assert code_of(envelope_with(',"n":' + literal)) == code


def test_a_sender_cannot_build_what_the_receiver_rejects():
    with pytest.raises(ProtocolError):
        make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data={"id": 2**63})
    with pytest.raises(ProtocolError):
        make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data=_deep(31))
    frame = make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data=_deep(30)).encode()
    [payload] = FrameDecoder().feed(frame)
    assert validate(decode_envelope(payload), GUEST_TO_HOST)["data"] == _deep(30)


def _deep(n: int):
    value: object = []
    for _ in range(n - 1):
        value = [value]
    return value


# -- duplicate keys and byte-order mark --------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [
        b'{"version":1,"version":1,"source_addr":"heartbeat","dest_addr":"heartbeat","data":{}}',
        envelope_with(',"invocation_id":"b"'),
        envelope_with(',"x":{"k":1,"k":1}'),
    ],
)
def test_duplicate_keys_at_any_depth_are_malformed(payload):
    assert code_of(payload) == "malformed_json"


def test_byte_order_mark_is_malformed_but_fine_inside_a_string():
    assert code_of(b"\xef\xbb\xbf" + envelope_with("")) == "malformed_json"
    assert code_of(envelope_with(',"s":"\ufeff"'.encode().decode())) == "ok"
    decoder = FrameDecoder()
    assert decoder.feed(b"\n\xef\xbb\xbf\n") == [b"\xef\xbb\xbf"]  # not whitespace: a frame


# -- compact encoding, byte by byte --------------------------------------------------------
_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
}


def spec_string(text: str) -> bytes:
    """docs/protocol.md §4.5, written from the text, not from Python's json."""
    out = []
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return ('"' + "".join(out) + '"').encode("utf-8")


def test_compact_string_encoding_matches_the_spec_for_every_ascii_and_some_unicode():
    text = "".join(chr(c) for c in range(0x80)) + "é€😀\u2028\u007f/"
    frame = make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data=text).encode()
    expected = (
        b'\n{"version":1,"source_addr":"server_group","dest_addr":"server_group",'
        b'"data":{"msg_type":"broadcast","data":' + spec_string(text) + b"}}\n"
    )
    assert frame == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (-12, "-12"),
        (1.0, "1.0"),
        (0.1, "0.1"),
        (-0.0, "-0.0"),
        (1e16, "1e+16"),
        (123456789012345.6, "123456789012345.6"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e300, "1.5e+300"),
        (True, "true"),
        (None, "null"),
        ({"b": 1, "a": [1, {}]}, '{"b":1,"a":[1,{}]}'),
    ],
)
def test_compact_number_and_container_encoding(value, text):
    frame = make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data=value).encode()
    assert frame.endswith(b'"data":' + text.encode() + b"}}\n")


def test_received_numbers_keep_their_kind_when_measured():
    obj = parse_json_object(b'{"a":1e3,"b":1000,"c":1.50}')
    assert json.dumps(obj, separators=(",", ":")) == '{"a":1000.0,"b":1000,"c":1.5}'


# -- effective interval before init_ack ------------------------------------------------------
def test_effective_interval_is_the_requested_one_until_init_ack():
    guest = GuestHeartbeat(name="g", interval_ms=500, invocation_id="inv")
    guest.start(0.0)
    assert guest.effective_interval_ms == 500
    guest.receive(
        make(HEARTBEAT, "init_ack", HOST_TO_GUEST, invocation_id="inv", interval_ms=2000), 0.1
    )
    assert guest.effective_interval_ms == 2000
    guest.host_connected(5.0)  # a new host: its answer is not known yet
    assert guest.effective_interval_ms == 500
    # Registered by a challenge before any init_ack: stale after 3 x 500 ms + 0.5 s.
    guest.receive(make(HEARTBEAT, "challenge", HOST_TO_GUEST, seq=1, nonce="00000000"), 5.1)
    assert guest.state == guest.REGISTERED
    assert guest.next_deadline() == pytest.approx(5.1 + 2.0)


# -- nacks and versions ------------------------------------------------------------------
def host() -> HostChannel:
    channel = HostChannel(HostPolicy(), ChannelLimits(), 0.0)
    channel.connection_made(0.0)
    take_output(channel)
    return channel


def test_a_pdu_with_a_bad_version_gets_a_version_1_nack_on_heartbeat():
    channel = host()
    payload = (
        b'{"version":2,"source_addr":"server_group","dest_addr":"server_group",'
        b'"data":{"msg_type":"status_query","seq":1}}'
    )
    channel.receive_data(b"\n" + payload + b"\n", 0.0)
    [frame] = FrameDecoder().feed(take_output(channel))
    envelope = decode_envelope(frame)
    assert envelope.version == 1 and envelope.dest_addr == HEARTBEAT
    msg = validate(envelope, HOST_TO_GUEST)
    assert msg["orig_msg_type"] == "status_query"
    assert msg["log_msg"].startswith("unsupported_version: ")


def test_a_nack_with_a_bad_version_is_never_answered():
    channel = host()
    payload = (
        b'{"version":7,"source_addr":"heartbeat","dest_addr":"heartbeat",'
        b'"data":{"msg_type":"nack","orig_msg_type":"x","log_msg":"y"}}'
    )
    channel.receive_data(b"\n" + payload + b"\n", 0.0)
    assert not channel.wants_write
    assert channel.counters["bad_frames"] == 1 and channel.counters["nacks_sent"] == 0
