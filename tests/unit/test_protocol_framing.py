"""FrameDecoder / encode_frame: newline framing of the byte stream."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guest_ha.protocol import (
    GUEST_TO_HOST,
    HEARTBEAT,
    HOST_TO_GUEST,
    MAX_FRAME_BYTES,
    SERVER_GROUP,
    FrameDecoder,
    FrameTooLarge,
    ProtocolError,
    encode_frame,
    make,
)

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

A = b'{"a":1}'
B = b'{"b":2}'


def reference_decode(stream: bytes, max_frame: int) -> list:
    """What decoding ``stream`` must yield, written the obvious (unbounded) way."""
    out: list = []
    segments = stream.split(b"\n")
    for segment in segments[:-1]:
        if len(segment) > max_frame:
            out.append(FrameTooLarge(f"frame larger than {max_frame} bytes dropped"))
        elif segment.strip():
            out.append(segment)
    if len(segments[-1]) > max_frame:  # reported as soon as it cannot fit
        out.append(FrameTooLarge(f"frame larger than {max_frame} bytes dropped"))
    return out


def cuts_for(stream: bytes):
    return st.lists(st.integers(0, max(len(stream), 0)), max_size=20)


# -- encode_frame -------------------------------------------------------------------------


def test_encode_frame_wraps_in_newlines():
    assert encode_frame(A) == b"\n" + A + b"\n"


def test_encode_frame_rejects_embedded_newline():
    with pytest.raises(ValueError):
        encode_frame(b'{"a":\n1}')


def test_max_frame_must_be_sane():
    with pytest.raises(ValueError):
        FrameDecoder(1)
    assert FrameDecoder().max_frame == MAX_FRAME_BYTES == 4096


# -- examples ---------------------------------------------------------------------------


def test_single_frame():
    dec = FrameDecoder()
    assert dec.feed(encode_frame(A)) == [A]
    assert dec.buffered == 0


def test_fragments_byte_by_byte():
    dec = FrameDecoder()
    out = []
    for byte in encode_frame(A) + encode_frame(B):
        out.extend(dec.feed(bytes([byte])))
    assert out == [A, B]
    assert dec.buffered == 0


def test_several_frames_in_one_feed():
    dec = FrameDecoder()
    stream = encode_frame(A) + encode_frame(B) + encode_frame(A)
    assert dec.feed(stream) == [A, B, A]


def test_frames_without_leading_newline_and_single_separator():
    dec = FrameDecoder()
    assert dec.feed(A + b"\n" + B + b"\n") == [A, B]


def test_leading_garbage_is_its_own_frame_and_does_not_corrupt_the_next():
    dec = FrameDecoder()
    out = dec.feed(b"\x00\xffgarbage" + encode_frame(A))
    assert out == [b"\x00\xffgarbage", A]


def test_leading_garbage_then_fragmented_frame():
    dec = FrameDecoder()
    assert dec.feed(b"noise noise") == []
    assert dec.feed(b"\n" + A[:3]) == [b"noise noise"]
    assert dec.feed(A[3:] + b"\n") == [A]


def test_buffer_ending_mid_frame_is_kept_until_completed():
    dec = FrameDecoder()
    stream = encode_frame(A) + encode_frame(B)
    cut = len(encode_frame(A)) + 4
    assert dec.feed(stream[:cut]) == [A]
    assert dec.buffered == 3  # b'{"b' (the leading newline is a separator)
    assert dec.feed(stream[cut:]) == [B]
    assert dec.buffered == 0


def test_empty_and_whitespace_frames_are_skipped():
    dec = FrameDecoder()
    assert dec.feed(b"\n\n\n   \n\t\r\n" + encode_frame(A) + b"\n\n") == [A]
    assert dec.feed(b"") == []
    assert dec.buffered == 0


def test_reset_forgets_partial_frame():
    dec = FrameDecoder()
    dec.feed(b'\n{"half":')
    assert dec.buffered > 0
    dec.reset()
    assert dec.buffered == 0
    assert dec.feed(encode_frame(A)) == [A]


def test_frame_of_exactly_max_frame_is_accepted():
    dec = FrameDecoder(16)
    body = b"x" * 16
    assert dec.feed(b"\n" + body + b"\n") == [body]
    # and in fragments
    dec = FrameDecoder(16)
    assert dec.feed(b"\n" + body[:10]) == []
    assert dec.feed(body[10:]) == []
    assert dec.buffered == 16
    assert dec.feed(b"\n") == [body]


@pytest.mark.parametrize("size", [17, 18, 100, 10_000])
def test_oversized_frame_in_one_feed_dropped_once_then_resync(size):
    dec = FrameDecoder(16)
    out = dec.feed(b"\n" + b"y" * size + b"\n" + A + b"\n")
    assert len([x for x in out if isinstance(x, FrameTooLarge)]) == 1
    assert out[-1] == A
    assert len(out) == 2
    assert dec.frames_dropped == 1


def test_oversized_frame_in_fragments_dropped_once_then_resync():
    dec = FrameDecoder(16)
    out = []
    out += dec.feed(b"\n" + b"y" * 10)
    out += dec.feed(b"y" * 10)  # crosses the limit here: reported now
    assert dec.buffered == 0
    out += dec.feed(b"y" * 1000)  # still the same oversized frame: dropped silently
    out += dec.feed(b"y" * 5 + b"\n" + A[:2])
    out += dec.feed(A[2:] + b"\n")
    errors = [x for x in out if isinstance(x, FrameTooLarge)]
    assert len(errors) == 1
    assert [x for x in out if isinstance(x, bytes)] == [A]
    assert dec.frames_dropped == 1
    assert dec.buffered == 0


def test_oversized_partial_completed_by_chunk_with_newline():
    dec = FrameDecoder(16)
    assert dec.feed(b"\n" + b"z" * 10) == []
    out = dec.feed(b"z" * 10 + b"\n" + B + b"\n")
    assert isinstance(out[0], FrameTooLarge)
    assert out[1:] == [B]


def test_each_oversized_frame_gives_exactly_one_error():
    dec = FrameDecoder(16)
    stream = (b"\n" + b"q" * 40 + b"\n" + A) * 5 + b"\n"
    out = dec.feed(stream)
    assert sum(isinstance(x, FrameTooLarge) for x in out) == 5
    assert [x for x in out if isinstance(x, bytes)] == [A] * 5
    assert dec.frames_dropped == 5


def test_newline_storm_and_huge_garbage_keep_memory_bounded():
    dec = FrameDecoder()
    for _ in range(50):
        dec.feed(b"\xaa" * 1000)
        assert dec.buffered <= dec.max_frame
    dec.feed(b"\n" * 10_000)
    assert dec.buffered == 0


def test_frame_too_large_is_a_protocol_error_with_code():
    dec = FrameDecoder(8)
    (err,) = dec.feed(b"\n" + b"w" * 9 + b"\n")
    assert isinstance(err, ProtocolError)
    assert err.code == "frame_too_large"


# -- properties ---------------------------------------------------------------------------

NONCE = st.text(alphabet="0123456789abcdef", min_size=8, max_size=64)
TOKEN = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-",
    min_size=1,
    max_size=64,
)
NAME = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FFF), max_size=64)
SEQ = st.integers(0, 2**53 - 1)
JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53 - 1), 2**53 - 1)  # I-JSON range (§4.3)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

VALID_MESSAGES = st.one_of(
    st.builds(
        lambda i, n, ms: make(
            HEARTBEAT, "init", GUEST_TO_HOST, invocation_id=i, name=n, interval_ms=ms
        ),
        TOKEN,
        NAME,
        st.integers(1, 2**31 - 1),
    ),
    st.builds(
        lambda s, n, h, r: make(
            HEARTBEAT, "challenge_response", GUEST_TO_HOST, seq=s, nonce=n, health=h, reason=r
        ),
        SEQ,
        NONCE,
        st.sampled_from(["healthy", "unhealthy"]),
        NAME,
    ),
    st.builds(lambda s, n: make(HEARTBEAT, "challenge", HOST_TO_GUEST, seq=s, nonce=n), SEQ, NONCE),
    st.builds(lambda s: make(SERVER_GROUP, "status_query", GUEST_TO_HOST, seq=s), SEQ),
    st.builds(lambda d: make(SERVER_GROUP, "broadcast", GUEST_TO_HOST, data=d), JSON),
)


@SETTINGS
@given(st.lists(VALID_MESSAGES, max_size=8), st.data())
def test_any_chunking_of_valid_stream_decodes_like_one_piece(messages, data):
    stream = b"".join(m.encode() for m in messages)
    whole = FrameDecoder().feed(stream)
    assert whole == [m.encode()[1:-1] for m in messages]
    cuts = data.draw(cuts_for(stream))
    dec = FrameDecoder()
    assert _feed_cut(dec, stream, cuts) == whole
    assert dec.buffered == 0


def _feed_cut(dec: FrameDecoder, stream: bytes, cuts) -> list:
    out: list = []
    start = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        out.extend(dec.feed(stream[start:cut]))
        assert dec.buffered <= dec.max_frame
        start = cut
    return out


STREAM_BYTES = st.lists(
    st.sampled_from([b"\n", b"\n\n", b"x", b"xxxxxxxx", b"\xff\x00", b" ", b"{}", b"y" * 40])
    | st.binary(max_size=40),
    max_size=40,
).map(b"".join)


@SETTINGS
@given(st.integers(2, 64), STREAM_BYTES, st.data())
def test_arbitrary_bytes_and_chunking_match_reference_and_never_raise(max_frame, stream, data):
    cuts = data.draw(cuts_for(stream))
    dec = FrameDecoder(max_frame)
    out = _feed_cut(dec, stream, cuts)
    for item in out:
        assert isinstance(item, (bytes, ProtocolError))
        if isinstance(item, bytes):
            assert 0 < len(item) <= max_frame
            assert b"\n" not in item
    expected = reference_decode(stream, max_frame)
    assert out == expected
    assert dec.frames_dropped == sum(isinstance(x, FrameTooLarge) for x in expected)


@SETTINGS
@given(st.binary(max_size=20_000), st.data())
def test_arbitrary_binary_with_default_limit(stream, data):
    cuts = data.draw(cuts_for(stream))
    dec = FrameDecoder()
    out = _feed_cut(dec, stream, cuts)
    assert all(isinstance(item, (bytes, ProtocolError)) for item in out)
    assert out == reference_decode(stream, MAX_FRAME_BYTES)
