"""The base envelope: decode_envelope / encode_envelope / Envelope."""

from __future__ import annotations

import json

import pytest

from guest_ha.protocol import (
    HEARTBEAT,
    MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    SERVER_GROUP,
    Envelope,
    InvalidEnvelope,
    MalformedFrame,
    ProtocolError,
    UnknownAddress,
    UnsupportedVersion,
    decode_envelope,
)
from guest_ha.protocol.envelope import encode_envelope

pytestmark = pytest.mark.unit

DATA = {"msg_type": "status_query", "seq": 1}


def raw(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def good(**overrides):
    obj = {"version": 1, "source_addr": SERVER_GROUP, "dest_addr": SERVER_GROUP, "data": DATA}
    obj.update(overrides)
    return obj


def test_valid_envelope_decodes():
    env = decode_envelope(raw(good()))
    assert env == Envelope(1, SERVER_GROUP, SERVER_GROUP, DATA)
    assert env.msg_type == "status_query"
    assert PROTOCOL_VERSION == 1


@pytest.mark.parametrize("app", [HEARTBEAT, SERVER_GROUP])
def test_both_addresses_accepted(app):
    assert decode_envelope(raw(good(dest_addr=app))).dest_addr == app


def test_source_addr_is_only_type_checked():
    # the port a message arrives on identifies the sender, not its fields
    env = decode_envelope(raw(good(source_addr="anything at all")))
    assert env.source_addr == "anything at all"


def test_msg_type_property_for_odd_data():
    assert Envelope(1, "a", HEARTBEAT, {}).msg_type == ""
    assert Envelope(1, "a", HEARTBEAT, {"msg_type": 7}).msg_type == ""


def test_extra_envelope_keys_ignored():
    assert decode_envelope(raw({**good(), "extra": [1, 2]})).data == DATA


@pytest.mark.parametrize("key", ["version", "source_addr", "dest_addr", "data"])
def test_each_missing_key_is_invalid_envelope(key):
    obj = good()
    del obj[key]
    with pytest.raises(InvalidEnvelope) as info:
        decode_envelope(raw(obj))
    assert key in info.value.message
    assert info.value.code == "invalid_envelope"
    if key != "data":
        assert info.value.msg_type == "status_query"


@pytest.mark.parametrize("version", ["1", 1.0, None, [1], {"v": 1}, True, False])
def test_mistyped_version_is_invalid_envelope(version):
    with pytest.raises(InvalidEnvelope) as info:
        decode_envelope(raw(good(version=version)))
    assert type(info.value) is InvalidEnvelope  # not UnsupportedVersion: bool is no int
    assert info.value.msg_type == "status_query"


@pytest.mark.parametrize("version", [0, 2, -1, 2**53 - 1])
def test_unsupported_version(version):
    with pytest.raises(UnsupportedVersion) as info:
        decode_envelope(raw(good(version=version)))
    assert info.value.code == "unsupported_version"
    assert info.value.msg_type == "status_query"
    assert isinstance(info.value, InvalidEnvelope)


@pytest.mark.parametrize("key", ["source_addr", "dest_addr"])
@pytest.mark.parametrize("value", [1, None, True, ["heartbeat"], {"a": 1}])
def test_mistyped_addresses(key, value):
    with pytest.raises(InvalidEnvelope):
        decode_envelope(raw(good(**{key: value})))


@pytest.mark.parametrize("dest", ["", "Heartbeat", "server-group", "x" * 1000, "heartbeat "])
def test_unknown_dest_addr(dest):
    with pytest.raises(UnknownAddress) as info:
        decode_envelope(raw(good(dest_addr=dest)))
    assert info.value.code == "unknown_address"
    assert info.value.msg_type == "status_query"
    assert len(info.value.message) < 200  # long hostile values are shortened


@pytest.mark.parametrize("data", [None, [], "x", 1, True])
def test_data_must_be_object(data):
    with pytest.raises(InvalidEnvelope) as info:
        decode_envelope(raw(good(data=data)))
    assert info.value.msg_type == ""


def test_non_string_msg_type_not_propagated():
    with pytest.raises(UnknownAddress) as info:
        decode_envelope(raw(good(dest_addr="nope", data={"msg_type": ["x"]})))
    assert info.value.msg_type == ""


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"not json",
        b"{",
        b'{"version":1,}',
        b"[]",
        b"[1,2]",
        b"null",
        b"1",
        b'"string"',
        b"\xff\xfe{}",
        b'{"a":"\xc3"}',  # truncated UTF-8 sequence
        b'{"a":"\xed\xa0\x80"}',  # UTF-8-encoded surrogate: invalid UTF-8
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-Infinity}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b'{"a":' + b"9" * 5000 + b"}",  # past the int-from-string digit limit
    ],
)
def test_malformed_frames(frame):
    with pytest.raises(MalformedFrame) as info:
        decode_envelope(frame)
    assert info.value.code == "malformed_json"
    assert len(info.value.message) < 200


def test_utf8_bom_is_malformed_not_crash():
    with pytest.raises(ProtocolError):
        decode_envelope(b"\xef\xbb\xbf" + raw(good()))


def test_non_ascii_utf8_accepted():
    env = decode_envelope(raw(good(data={"msg_type": "broadcast", "data": "héllo ✓"})))
    assert env.data["data"] == "héllo ✓"


# -- encode_envelope -----------------------------------------------------------------------


def test_encode_envelope_is_compact_utf8_frame():
    frame = encode_envelope(SERVER_GROUP, {"msg_type": "broadcast", "data": "é"})
    assert frame.startswith(b"\n") and frame.endswith(b"\n")
    body = frame[1:-1]
    assert b" " not in body
    assert "é".encode() in body  # not \u00e9
    assert decode_envelope(body).data == {"msg_type": "broadcast", "data": "é"}
    obj = json.loads(body)
    assert obj["version"] == 1 and obj["source_addr"] == obj["dest_addr"] == SERVER_GROUP


def test_encode_envelope_refuses_oversized_frames():
    with pytest.raises(ValueError):
        encode_envelope(SERVER_GROUP, {"msg_type": "broadcast", "data": "x" * MAX_FRAME_BYTES})
