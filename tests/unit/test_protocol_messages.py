"""PDU tables of both applications: validate, make, Message.encode, nack."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest_ha.protocol import (
    GUEST_TO_HOST,
    HEARTBEAT,
    HOST_TO_GUEST,
    MAX_BROADCAST_BYTES,
    MAX_FRAME_BYTES,
    SERVER_GROUP,
    Envelope,
    FrameDecoder,
    InvalidField,
    Message,
    UnknownMessageType,
    decode_envelope,
    make,
    validate,
)
from guest_ha.protocol.messages import SPECS, json_size_bytes, nack

pytestmark = pytest.mark.unit

UUID = "0b7d2f3c-5a4e-4d1b-9c6e-1f2a3b4c5d6e"
MEMBER = {
    "uuid": UUID,
    "display_name": "vm-1",
    "host": "compute-1",
    "state": "active",
    "task_state": None,
    "power_state": "running",
}

# Every PDU of both applications, in its legal direction, with all fields set.
VALID = {
    (HEARTBEAT, GUEST_TO_HOST, "init"): {
        "invocation_id": "a1b2-c3.d4_e5",
        "name": "web-1",
        "interval_ms": 1000,
        "corrective_action": "reboot",
    },
    (HEARTBEAT, GUEST_TO_HOST, "challenge_response"): {
        "seq": 7,
        "nonce": "0123456789abcdef",
        "health": "healthy",
        "reason": "",
    },
    (HEARTBEAT, GUEST_TO_HOST, "exit"): {"invocation_id": "a1b2", "reason": "SIGTERM"},
    (HEARTBEAT, GUEST_TO_HOST, "nack"): {"orig_msg_type": "challenge", "log_msg": "bad nonce"},
    (HEARTBEAT, HOST_TO_GUEST, "init_ack"): {"invocation_id": "a1b2", "interval_ms": 100},
    (HEARTBEAT, HOST_TO_GUEST, "challenge"): {"seq": 0, "nonce": "deadbeef"},
    (HEARTBEAT, HOST_TO_GUEST, "nack"): {"orig_msg_type": "init", "log_msg": "x"},
    (SERVER_GROUP, GUEST_TO_HOST, "status_query"): {"seq": 3},
    (SERVER_GROUP, GUEST_TO_HOST, "broadcast"): {"data": {"role": "active", "n": [1, 2.5]}},
    (SERVER_GROUP, GUEST_TO_HOST, "nack"): {"orig_msg_type": "notification", "log_msg": ""},
    (SERVER_GROUP, HOST_TO_GUEST, "status_response"): {"seq": 3, "data": MEMBER},
    (SERVER_GROUP, HOST_TO_GUEST, "status_response_done"): {"seq": 3},
    (SERVER_GROUP, HOST_TO_GUEST, "notification"): {"data": MEMBER},
    (SERVER_GROUP, HOST_TO_GUEST, "broadcast"): {"source_instance": UUID, "data": "hello"},
    (SERVER_GROUP, HOST_TO_GUEST, "nack"): {"orig_msg_type": "broadcast", "log_msg": "too big"},
}

OPPOSITE = {GUEST_TO_HOST: HOST_TO_GUEST, HOST_TO_GUEST: GUEST_TO_HOST}


def env(app, msg_type, **fields) -> Envelope:
    return Envelope(1, app, app, {"msg_type": msg_type, **fields})


def wire(app, msg_type, **fields) -> bytes:
    obj = {
        "version": 1,
        "source_addr": app,
        "dest_addr": app,
        "data": {"msg_type": msg_type, **fields},
    }
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def test_table_covers_every_pdu_of_the_design():
    expected = {
        (HEARTBEAT, GUEST_TO_HOST): {"init", "challenge_response", "exit", "nack"},
        (HEARTBEAT, HOST_TO_GUEST): {"init_ack", "challenge", "nack"},
        (SERVER_GROUP, GUEST_TO_HOST): {"status_query", "broadcast", "nack"},
        (SERVER_GROUP, HOST_TO_GUEST): {
            "status_response",
            "status_response_done",
            "notification",
            "broadcast",
            "nack",
        },
    }
    assert {k: set(v) for k, v in SPECS.items()} == expected
    assert {(a, d, t) for (a, d), table in SPECS.items() for t in table} == set(VALID)


@pytest.mark.parametrize(("app", "direction", "msg_type"), sorted(VALID))
def test_every_pdu_validates_in_its_direction(app, direction, msg_type):
    fields = VALID[(app, direction, msg_type)]
    msg = validate(decode_envelope(wire(app, msg_type, **fields)), direction)
    assert msg == Message(app, msg_type, fields)
    assert msg.app == app and msg.msg_type == msg_type
    for key, value in fields.items():
        assert msg[key] == value


ONE_WAY = [k for k in sorted(VALID) if k[2] not in SPECS[(k[0], OPPOSITE[k[1]])]]
ONE_APP = [
    k
    for k in sorted(VALID)
    if k[2] not in SPECS[(SERVER_GROUP if k[0] == HEARTBEAT else HEARTBEAT, k[1])]
]


@pytest.mark.parametrize(("app", "direction", "msg_type"), ONE_WAY)
def test_pdu_in_wrong_direction_is_unknown_message_type(app, direction, msg_type):
    other = OPPOSITE[direction]
    with pytest.raises(UnknownMessageType) as info:
        validate(env(app, msg_type, **VALID[(app, direction, msg_type)]), other)
    assert info.value.msg_type == msg_type
    assert info.value.code == "unknown_msg_type"


@pytest.mark.parametrize(("app", "direction", "msg_type"), ONE_APP)
def test_pdu_sent_to_the_other_application_is_unknown(app, direction, msg_type):
    other_app = SERVER_GROUP if app == HEARTBEAT else HEARTBEAT
    with pytest.raises(UnknownMessageType):
        validate(env(other_app, msg_type, **VALID[(app, direction, msg_type)]), direction)


@pytest.mark.parametrize("direction", [GUEST_TO_HOST, HOST_TO_GUEST])
@pytest.mark.parametrize("app", [HEARTBEAT, SERVER_GROUP])
@pytest.mark.parametrize("msg_type", [None, 1, "", "INIT", "challenge ", ["init"], "x" * 500])
def test_missing_or_bogus_msg_type(app, direction, msg_type):
    data = {} if msg_type is None else {"msg_type": msg_type}
    with pytest.raises(UnknownMessageType) as info:
        validate(Envelope(1, app, app, data), direction)
    assert len(info.value.msg_type) <= 64
    if not isinstance(msg_type, str):
        assert info.value.msg_type == ""


def test_heartbeat_challenge_response_rejected_by_guest_side_crossing():
    # a guest may not send challenges to the host, nor the host challenge responses
    with pytest.raises(UnknownMessageType):
        validate(env(HEARTBEAT, "challenge", seq=1, nonce="deadbeef"), GUEST_TO_HOST)
    with pytest.raises(UnknownMessageType):
        validate(env(HEARTBEAT, "init", **VALID[(HEARTBEAT, GUEST_TO_HOST, "init")]), HOST_TO_GUEST)


def test_optional_fields_and_defaults():
    msg = validate(
        env(HEARTBEAT, "init", invocation_id="i", name="n", interval_ms=5), GUEST_TO_HOST
    )
    assert "corrective_action" not in msg.fields
    msg = validate(
        env(HEARTBEAT, "challenge_response", seq=1, nonce="abcdef01", health="unhealthy"),
        GUEST_TO_HOST,
    )
    assert msg["reason"] == ""
    msg = validate(env(HEARTBEAT, "exit", invocation_id="i"), GUEST_TO_HOST)
    assert msg["reason"] == ""


def test_unknown_extra_fields_are_ignored():
    msg = validate(env(SERVER_GROUP, "status_query", seq=1, future_field={"x": 1}), GUEST_TO_HOST)
    assert msg.fields == {"seq": 1}


@pytest.mark.parametrize("action", ["log", "reboot", "stop"])
def test_corrective_actions(action):
    fields = {**VALID[(HEARTBEAT, GUEST_TO_HOST, "init")], "corrective_action": action}
    assert validate(env(HEARTBEAT, "init", **fields), GUEST_TO_HOST)["corrective_action"] == action


# -- field errors -----------------------------------------------------------------------

SEQ_BAD = [-1, 2**53, 10**30, "1", 1.0, True, False, None, [1]]
TEXT_BAD = [1, None, [], {}, True]
NONCE_BAD = ["", "abc", "0123456G", "DEADBEEF", "0" * 65, "dead beef", "deadbeef\n", 12345678]
TOKEN_BAD = ["", "with space", "x" * 65, "semi;colon", "tab\tx", "é", 5, None]
INTERVAL_BAD = [0, -1, 2**31, "1000", 1000.0, True, None]
UUID_BAD = ["", "not-a-uuid", "g" * 32, "0" * 37, UUID + "0", 12, None]
JSON_OBJECT_BAD = [[], "x", 1, None, True]
NAME_BAD = ["x" * 65, "ctrl\x00char", "new\nline", 1, None]
REASON_BAD = ["x" * 257, "bell\x07", 0, []]
LOG_BAD = ["x" * 513, "\x1b[31m", 1]
ORIG_BAD = ["x" * 65, "\x01", 1, None]

FIELD_CASES = []


def _cases(key, field, values):
    for value in values:
        FIELD_CASES.append((key, field, value))


_cases((HEARTBEAT, GUEST_TO_HOST, "init"), "invocation_id", TOKEN_BAD)
_cases((HEARTBEAT, GUEST_TO_HOST, "init"), "name", NAME_BAD)
_cases((HEARTBEAT, GUEST_TO_HOST, "init"), "interval_ms", INTERVAL_BAD)
_cases((HEARTBEAT, GUEST_TO_HOST, "init"), "corrective_action", ["", "Reboot", "halt", 1, None])
_cases((HEARTBEAT, GUEST_TO_HOST, "challenge_response"), "seq", SEQ_BAD)
_cases((HEARTBEAT, GUEST_TO_HOST, "challenge_response"), "nonce", NONCE_BAD)
_cases((HEARTBEAT, GUEST_TO_HOST, "challenge_response"), "health", ["ok", "HEALTHY", "", 1, True])
_cases((HEARTBEAT, GUEST_TO_HOST, "challenge_response"), "reason", REASON_BAD)
_cases((HEARTBEAT, GUEST_TO_HOST, "exit"), "invocation_id", TOKEN_BAD)
_cases((HEARTBEAT, GUEST_TO_HOST, "exit"), "reason", REASON_BAD)
_cases((HEARTBEAT, GUEST_TO_HOST, "nack"), "orig_msg_type", ORIG_BAD)
_cases((HEARTBEAT, GUEST_TO_HOST, "nack"), "log_msg", LOG_BAD)
_cases((HEARTBEAT, HOST_TO_GUEST, "init_ack"), "invocation_id", TOKEN_BAD)
_cases((HEARTBEAT, HOST_TO_GUEST, "init_ack"), "interval_ms", INTERVAL_BAD)
_cases((HEARTBEAT, HOST_TO_GUEST, "challenge"), "seq", SEQ_BAD)
_cases((HEARTBEAT, HOST_TO_GUEST, "challenge"), "nonce", NONCE_BAD)
_cases((HEARTBEAT, HOST_TO_GUEST, "nack"), "orig_msg_type", ORIG_BAD)
_cases((HEARTBEAT, HOST_TO_GUEST, "nack"), "log_msg", LOG_BAD)
_cases((SERVER_GROUP, GUEST_TO_HOST, "status_query"), "seq", SEQ_BAD)
_cases((SERVER_GROUP, GUEST_TO_HOST, "broadcast"), "data", ["x" * 3049])
_cases((SERVER_GROUP, GUEST_TO_HOST, "nack"), "log_msg", LOG_BAD)
_cases((SERVER_GROUP, HOST_TO_GUEST, "status_response"), "seq", SEQ_BAD)
_cases((SERVER_GROUP, HOST_TO_GUEST, "status_response"), "data", JSON_OBJECT_BAD)
_cases((SERVER_GROUP, HOST_TO_GUEST, "status_response_done"), "seq", SEQ_BAD)
_cases((SERVER_GROUP, HOST_TO_GUEST, "notification"), "data", JSON_OBJECT_BAD)
_cases((SERVER_GROUP, HOST_TO_GUEST, "broadcast"), "source_instance", UUID_BAD)
_cases((SERVER_GROUP, HOST_TO_GUEST, "broadcast"), "data", ["y" * 3049])
_cases((SERVER_GROUP, HOST_TO_GUEST, "nack"), "orig_msg_type", ORIG_BAD)


@pytest.mark.parametrize(("key", "field", "value"), FIELD_CASES, ids=repr)
def test_bad_field_value_is_invalid_field_with_msg_type(key, field, value):
    app, direction, msg_type = key
    fields = {**VALID[key], field: value}
    with pytest.raises(InvalidField) as info:
        validate(env(app, msg_type, **fields), direction)
    assert info.value.msg_type == msg_type
    assert info.value.code == "invalid_field"
    assert field in info.value.message


REQUIRED = [(key, name) for key in sorted(VALID) for name in SPECS[key[:2]][key[2]].required]


@pytest.mark.parametrize(("key", "field"), REQUIRED, ids=repr)
def test_each_missing_required_field_is_invalid_field(key, field):
    app, direction, msg_type = key
    fields = {k: v for k, v in VALID[key].items() if k != field}
    with pytest.raises(InvalidField) as info:
        validate(env(app, msg_type, **fields), direction)
    assert info.value.msg_type == msg_type
    assert field in info.value.message


@pytest.mark.parametrize("field", ["seq", "interval_ms"])
def test_bool_is_not_an_integer(field):
    if field == "seq":
        with pytest.raises(InvalidField):
            validate(env(SERVER_GROUP, "status_query", seq=True), GUEST_TO_HOST)
    else:
        with pytest.raises(InvalidField):
            validate(
                env(HEARTBEAT, "init", invocation_id="i", name="n", interval_ms=True),
                GUEST_TO_HOST,
            )


@pytest.mark.parametrize("seq", [0, 1, 2**53 - 1])
def test_seq_limits_inclusive(seq):
    assert validate(env(SERVER_GROUP, "status_query", seq=seq), GUEST_TO_HOST)["seq"] == seq


@pytest.mark.parametrize("interval", [1, 100, 60000, 2**31 - 1])
def test_interval_field_limits_inclusive(interval):
    msg = validate(
        env(HEARTBEAT, "init", invocation_id="i", name="", interval_ms=interval), GUEST_TO_HOST
    )
    assert msg["interval_ms"] == interval  # clamping is host policy, not validation


def test_text_limits_inclusive():
    fields = {"invocation_id": "i" * 64, "name": "n" * 64, "interval_ms": 1}
    assert validate(env(HEARTBEAT, "init", **fields), GUEST_TO_HOST)["name"] == "n" * 64
    ok = validate(env(HEARTBEAT, "nack", orig_msg_type="o" * 64, log_msg="l" * 512), HOST_TO_GUEST)
    assert len(ok["log_msg"]) == 512
    assert validate(env(HEARTBEAT, "challenge", seq=1, nonce="a" * 64), HOST_TO_GUEST)


@pytest.mark.parametrize("source", [UUID, UUID.upper(), UUID.replace("-", "")])
def test_source_instance_formats(source):
    msg = validate(env(SERVER_GROUP, "broadcast", source_instance=source, data=1), HOST_TO_GUEST)
    assert msg["source_instance"] == source


# -- broadcast size ------------------------------------------------------------------------


def _sized(n_bytes: int, char: str = "x"):
    """A JSON string whose compact UTF-8 encoding is exactly ``n_bytes`` long."""
    width = len(char.encode())
    body = n_bytes - 2
    assert body % width == 0
    value = char * (body // width)
    assert len(json_size_bytes(value)) == n_bytes
    return value


@pytest.mark.parametrize("direction", [GUEST_TO_HOST, HOST_TO_GUEST])
@pytest.mark.parametrize("char", ["x", "é", "€", "😀"])
def test_broadcast_limit_3050_exact(direction, char):
    extra = {"source_instance": UUID} if direction == HOST_TO_GUEST else {}
    base = 3050 - ((3050 - 2) % len(char.encode()))
    value = _sized(base, char)
    assert validate(env(SERVER_GROUP, "broadcast", data=value, **extra), direction)
    too_big = value + "x" * (3051 - base)
    assert len(json_size_bytes(too_big)) == 3051
    with pytest.raises(InvalidField) as info:
        validate(env(SERVER_GROUP, "broadcast", data=too_big, **extra), direction)
    assert info.value.msg_type == "broadcast"


def test_broadcast_limit_measured_as_compact_json():
    assert MAX_BROADCAST_BYTES == 3050
    # an object whose pretty-printed form is far larger still fits when compact
    data = {f"k{i:03d}": i for i in range(250)}
    compact = len(json_size_bytes(data))
    assert compact <= 3050 < len(json.dumps(data, indent=4))
    assert validate(env(SERVER_GROUP, "broadcast", data=data), GUEST_TO_HOST)
    # escapes count as they are sent: 6 bytes per control character
    value = "\x01" * 508  # 508 * 6 + 2 = 3050
    assert len(json_size_bytes(value)) == 3050
    assert validate(env(SERVER_GROUP, "broadcast", data=value), GUEST_TO_HOST)
    with pytest.raises(InvalidField):
        validate(env(SERVER_GROUP, "broadcast", data=value + "\x01"), GUEST_TO_HOST)


def test_broadcast_data_may_be_any_json_value():
    for value in [None, True, 0, -1.5, "s", [], [1, "a", None], {"nested": {"a": [1]}}]:
        msg = validate(env(SERVER_GROUP, "broadcast", data=value), GUEST_TO_HOST)
        assert msg["data"] == value


def test_guest_broadcast_carrying_source_instance_rejected():
    with pytest.raises(InvalidField) as info:
        validate(env(SERVER_GROUP, "broadcast", data="hi", source_instance=UUID), GUEST_TO_HOST)
    assert info.value.msg_type == "broadcast"
    assert "source_instance" in info.value.message


def test_host_broadcast_requires_source_instance():
    with pytest.raises(InvalidField):
        validate(env(SERVER_GROUP, "broadcast", data="hi"), HOST_TO_GUEST)


def test_status_data_limit():
    big = {"blob": "x" * 3100}
    with pytest.raises(InvalidField):
        validate(env(SERVER_GROUP, "notification", data=big), HOST_TO_GUEST)
    with pytest.raises(InvalidField):
        validate(env(SERVER_GROUP, "status_response", seq=1, data=big), HOST_TO_GUEST)


def test_encoded_max_size_broadcasts_fit_in_a_frame():
    data = _sized(3050)
    for msg in (
        make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data=data),
        make(SERVER_GROUP, "broadcast", HOST_TO_GUEST, source_instance=UUID, data=data),
        make(SERVER_GROUP, "status_response", HOST_TO_GUEST, seq=2**53 - 1, data={"d": data[:-8]}),
    ):
        frame = msg.encode()
        assert len(frame) - 2 <= MAX_FRAME_BYTES
        (payload,) = FrameDecoder().feed(frame)
        assert payload == frame[1:-1]
    # worst case for escaping: control characters
    data = "\x01" * 508
    frame = make(SERVER_GROUP, "broadcast", HOST_TO_GUEST, source_instance=UUID, data=data).encode()
    assert len(frame) - 2 <= MAX_FRAME_BYTES


# -- make / Message.encode ------------------------------------------------------------------


@pytest.mark.parametrize(("app", "direction", "msg_type"), sorted(VALID))
def test_encode_round_trips(app, direction, msg_type):
    msg = make(app, msg_type, direction, **VALID[(app, direction, msg_type)])
    frame = msg.encode()
    (payload,) = FrameDecoder().feed(frame)
    assert validate(decode_envelope(payload), direction) == msg


def test_make_validates_like_the_receiver():
    with pytest.raises(InvalidField):
        make(HEARTBEAT, "challenge", HOST_TO_GUEST, seq=-1, nonce="deadbeef")
    with pytest.raises(UnknownMessageType):
        make(HEARTBEAT, "challenge", GUEST_TO_HOST, seq=1, nonce="deadbeef")


def test_message_getitem_and_fields():
    msg = make(SERVER_GROUP, "status_query", GUEST_TO_HOST, seq=9)
    assert msg["seq"] == 9
    with pytest.raises(KeyError):
        msg["nope"]


NONCE = st.text(alphabet="0123456789abcdef", min_size=8, max_size=64)
PRINTABLE = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x10FFFF, exclude_categories=("Cs",))
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53 - 1), 2**53 - 1)  # I-JSON range (§4.3)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=25,
)

MESSAGES = st.one_of(
    st.builds(
        lambda i, n, ms, a: make(
            HEARTBEAT,
            "init",
            GUEST_TO_HOST,
            invocation_id=i,
            name=n,
            interval_ms=ms,
            **({"corrective_action": a} if a else {}),
        ),
        st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
        PRINTABLE.filter(lambda s: len(s) <= 64),
        st.integers(1, 2**31 - 1),
        st.sampled_from([None, "log", "reboot", "stop"]),
    ).map(lambda m: (m, GUEST_TO_HOST)),
    st.builds(
        lambda s, n, h, r: make(
            HEARTBEAT, "challenge_response", GUEST_TO_HOST, seq=s, nonce=n, health=h, reason=r
        ),
        st.integers(0, 2**53 - 1),
        NONCE,
        st.sampled_from(["healthy", "unhealthy"]),
        PRINTABLE.filter(lambda s: len(s) <= 256),
    ).map(lambda m: (m, GUEST_TO_HOST)),
    st.builds(lambda d: make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data=d), JSON).map(
        lambda m: (m, GUEST_TO_HOST)
    ),
    st.builds(
        lambda d: make(SERVER_GROUP, "broadcast", HOST_TO_GUEST, source_instance=UUID, data=d),
        JSON,
    ).map(lambda m: (m, HOST_TO_GUEST)),
    st.builds(
        lambda s, d: make(SERVER_GROUP, "status_response", HOST_TO_GUEST, seq=s, data=d),
        st.integers(0, 2**53 - 1),
        st.dictionaries(st.text(max_size=10), JSON, max_size=5),
    ).map(lambda m: (m, HOST_TO_GUEST)),
)


@settings(max_examples=200, deadline=None)
@given(MESSAGES)
def test_property_encode_round_trips(pair):
    msg, direction = pair
    frame = msg.encode()
    (payload,) = FrameDecoder().feed(frame)
    assert validate(decode_envelope(payload), direction) == msg


# -- nack ---------------------------------------------------------------------------------


def test_nack_builder_truncates_and_validates_in_both_directions():
    msg = nack(HEARTBEAT, "t" * 100, "line\nbreak\x00" + "z" * 1000)
    assert len(msg["orig_msg_type"]) == 64
    assert len(msg["log_msg"]) == 512
    assert "\n" not in msg["log_msg"] and "\x00" not in msg["log_msg"]
    for direction in (GUEST_TO_HOST, HOST_TO_GUEST):
        (payload,) = FrameDecoder().feed(msg.encode())
        assert validate(decode_envelope(payload), direction) == msg


@pytest.mark.parametrize("orig", ["\x01", "bad\ttype", "x\x1by", "\x00" * 70], ids=repr)
def test_nack_of_hostile_msg_type_is_itself_valid(orig):
    # the host echoes whatever msg_type a guest sent; the nack must still be a
    # well-formed PDU for the guest, not something the guest rejects in turn
    msg = nack(SERVER_GROUP, orig, "unknown_msg_type: nope")
    (payload,) = FrameDecoder().feed(msg.encode())
    for direction in (GUEST_TO_HOST, HOST_TO_GUEST):
        assert validate(decode_envelope(payload), direction).msg_type == "nack"


def test_nack_quoting_lone_surrogates_still_encodes():
    # nack() quotes text taken from hostile input; UTF-8 cannot carry lone
    # surrogates, so they must not reach Message.encode
    msg = nack(HEARTBEAT, "\ud800x", "bad value '\udfff'")
    (payload,) = FrameDecoder().feed(msg.encode())
    assert validate(decode_envelope(payload), HOST_TO_GUEST) == msg
    assert msg["orig_msg_type"] == "\ufffdx"
