"""Hostile input: nothing but ProtocolError may come out of the receive pipeline.

The pipeline is FrameDecoder.feed -> decode_envelope -> validate(direction), and
on top of it the two channel ends, which must swallow every error (answering
with a nack) and never emit a PDU that the other end would reject.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from channel_support import take_output
from guest_ha.protocol import (
    GUEST_TO_HOST,
    HOST_TO_GUEST,
    ChannelLimits,
    FrameDecoder,
    GuestChannel,
    GuestHeartbeat,
    HostChannel,
    HostPolicy,
    MalformedFrame,
    Message,
    ProtocolError,
    decode_envelope,
    validate,
)
from guest_ha.protocol.messages import SPECS

pytestmark = pytest.mark.unit

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

MSG_TYPES = sorted({t for table in SPECS.values() for t in table})
FIELD_NAMES = sorted(
    {
        name
        for table in SPECS.values()
        for spec in table.values()
        for name in (*spec.required, *spec.optional, *spec.forbidden)
    }
)


def run_pipeline(raw: bytes) -> None:
    """decode + validate both ways; anything but a ProtocolError fails the test."""
    for direction in (GUEST_TO_HOST, HOST_TO_GUEST):
        try:
            msg = validate(decode_envelope(raw), direction)
        except ProtocolError:
            continue
        assert isinstance(msg, Message)
        # whatever validates must be re-encodable (it may be relayed or logged)
        # and must decode to the same message again
        frame = msg.encode()
        (payload,) = FrameDecoder().feed(frame)
        assert validate(decode_envelope(payload), direction) == msg


class Ends:
    """A connected host channel and a started guest channel, fed hostile input."""

    def __init__(self) -> None:
        self.now = 100.0
        self.host = HostChannel(HostPolicy(), ChannelLimits(), self.now)
        self.host.connection_made(self.now)
        self.guest = GuestChannel(
            GuestHeartbeat(name="g", interval_ms=1000, invocation_id="inv"), self.now
        )
        self.guest.heartbeat.start(self.now)
        self.guest.tick(self.now)

    def feed_both(self, chunk: bytes) -> None:
        self.now += 0.001
        self.host.receive_data(chunk, self.now)
        self.guest.receive_data(chunk, self.now)
        self.check_outputs()

    def check_outputs(self) -> None:
        # Every frame either end emits must be accepted by the other end.
        for data, direction in (
            (take_output(self.host), HOST_TO_GUEST),
            (take_output(self.guest), GUEST_TO_HOST),
        ):
            for item in FrameDecoder().feed(data):
                assert isinstance(item, bytes)
                validate(decode_envelope(item), direction)


# -- arbitrary bytes -----------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=5000), st.lists(st.integers(0, 5000), max_size=10))
def test_arbitrary_bytes_through_decoder_and_pipeline(stream, cuts):
    dec = FrameDecoder()
    start = 0
    for cut in [*sorted(c for c in set(cuts) if c <= len(stream)), len(stream)]:
        for item in dec.feed(stream[start:cut]):
            assert isinstance(item, (bytes, ProtocolError))
            if isinstance(item, bytes):
                run_pipeline(item)
        start = cut


@SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_frame_bytes_through_pipeline(raw):
    run_pipeline(raw)


# -- structured fuzz ----------------------------------------------------------------------

ANY_TEXT = st.text(
    st.characters(codec=None, exclude_categories=()),  # includes lone surrogates
    max_size=20,
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**53 - 2, max_value=2**64)
    | st.integers(min_value=-(2**64), max_value=-1)
    | st.floats()  # NaN and +-inf included
    | st.sampled_from(["healthy", "unhealthy", "log", "reboot", "stop", "deadbeef", "i"])
    | ANY_TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=10,
)
DATA_DICTS = st.dictionaries(st.sampled_from(FIELD_NAMES) | ANY_TEXT, VALUES, max_size=6).flatmap(
    lambda fields: st.one_of(st.sampled_from(MSG_TYPES), ANY_TEXT, VALUES).map(
        lambda t: {**fields, "msg_type": t}
    )
)
ADDRS = st.sampled_from(["heartbeat", "server_group"]) | VALUES
ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from([1, 1, 1, 0, 2, True, "1", 1.0, None, 10**40]) | VALUES,
        "source_addr": ADDRS,
        "dest_addr": ADDRS,
        "data": DATA_DICTS | VALUES,
    },
)


def serialise(obj, how: int) -> bytes:
    """JSON text in several spellings, some of them not valid JSON or UTF-8."""
    if how == 0:  # ASCII: lone surrogates become \\udXXX escapes; NaN -> NaN
        return json.dumps(obj, ensure_ascii=True).encode()
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    if how == 1:  # raw surrogates as invalid UTF-8 bytes
        return text.encode("utf-8", "surrogatepass")
    return text.encode("utf-8", "replace")


@SETTINGS
@given(ENVELOPES, st.integers(0, 2))
@example(
    {
        "version": 1,
        "source_addr": "x",
        "dest_addr": "server_group",
        "data": {"msg_type": "broadcast", "data": "\ud800"},
    },
    0,
)
@example(
    {
        "version": 1,
        "source_addr": "x",
        "dest_addr": "heartbeat",
        "data": {"msg_type": "init", "invocation_id": "i", "name": "\udfff", "interval_ms": 9},
    },
    0,
)
@example(
    {
        "version": 1,
        "source_addr": "x",
        "dest_addr": "server_group",
        "data": {"msg_type": "broadcast", "data": math.inf},
    },
    0,
)
@example(
    {
        "version": 1,
        "source_addr": "x",
        "dest_addr": "server_group",
        "data": {"msg_type": "status_query", "seq": math.nan},
    },
    0,
)
def test_structured_envelopes_through_pipeline(obj, how):
    run_pipeline(serialise(obj, how))


@SETTINGS
@given(st.lists(st.tuples(ENVELOPES, st.integers(0, 2)), min_size=1, max_size=5))
@example(
    [
        (
            {
                "version": 1,
                "source_addr": "x",
                "dest_addr": "heartbeat",
                "data": {"msg_type": "\udc00"},
            },
            0,
        )
    ]
)
@example(
    [({"version": 1, "source_addr": "x", "dest_addr": "\ud83d", "data": {"msg_type": "init"}}, 0)]
)
@example(
    [
        (
            {
                "version": 1,
                "source_addr": "x",
                "dest_addr": "server_group",
                "data": {"msg_type": "\x01"},
            },
            0,
        )
    ]
)
def test_structured_envelopes_through_both_channels(items):
    ends = Ends()
    stream = b"".join(
        b"\n" + serialise(obj, how).replace(b"\n", b" ") + b"\n" for obj, how in items
    )
    ends.feed_both(stream)


@SETTINGS
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_through_both_channels(stream):
    ends = Ends()
    ends.feed_both(stream)
    ends.feed_both(b"\n" + stream + b"\n")


# -- specific nasties ------------------------------------------------------------------------

BROADCAST = (
    '{"version":1,"source_addr":"server_group","dest_addr":"server_group",'
    '"data":{"msg_type":"broadcast","data":%s}}'
)


@pytest.mark.parametrize(
    "inner",
    [
        "[" * 2000 + "]" * 2000,
        "[" * 990 + "]" * 990,
        '{"a":' * 700 + "1" + "}" * 700,
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "9" * 4000,
        '"\\ud800"',
        '"\\udc00\\ud800"',
        '"\\ud83d\\ude00"',  # a valid pair: fine
        '"\\u0000"',
    ],
    ids=lambda s: s[:20],
)
def test_nasty_broadcast_payloads(inner):
    raw = (BROADCAST % inner).encode()
    run_pipeline(raw)
    ends = Ends()
    ends.feed_both(b"\n" + raw + b"\n")


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1E999"])
def test_non_finite_numbers_are_malformed(number):
    # Python reads 1e400 as inf, which json.dumps writes back as the invalid
    # JSON token Infinity: a relayed broadcast would be unreadable to peers.
    with pytest.raises(MalformedFrame):
        decode_envelope((BROADCAST % number).encode())


@pytest.mark.parametrize("text", ['"\\ud800"', '"a\\udfffb"', '{"\\udc00":1}'])
def test_lone_surrogates_are_malformed(text):
    # A JSON escape may name a lone surrogate, which no UTF-8 text can carry.
    with pytest.raises(MalformedFrame):
        decode_envelope((BROADCAST % text).encode())


def test_valid_surrogate_pair_accepted():
    env = decode_envelope((BROADCAST % '"\\ud83d\\ude00"').encode())
    assert env.data["data"] == "\U0001f600"
