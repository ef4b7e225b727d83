"""The base JSON envelope that multiplexes application layers on one channel.

``{"version":1,"source_addr":A,"dest_addr":A,"data":{...}}``: every key is
mandatory; ``data`` is an object whose ``msg_type`` names the PDU.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from .errors import InvalidEnvelope, MalformedFrame, UnknownAddress, UnsupportedVersion
from .framing import MAX_FRAME_BYTES, encode_frame

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = (1,)

HEARTBEAT = "heartbeat"
SERVER_GROUP = "server_group"
ADDRESSES = (HEARTBEAT, SERVER_GROUP)

_ENVELOPE_KEYS = ("version", "source_addr", "dest_addr", "data")

MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays in a payload; the envelope object is depth 1,
``data`` depth 2 (docs/protocol.md §4.3)."""
MAX_SAFE_INTEGER = 2**53 - 1
"""Integer literals must lie within +-(2^53 - 1), exact in a double (RFC 7493, I-JSON)."""


@dataclass(frozen=True)
class Envelope:
    version: int
    source_addr: str
    dest_addr: str
    data: Dict[str, Any]

    @property
    def msg_type(self) -> str:
        value = self.data.get("msg_type")
        return value if isinstance(value, str) else ""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")


def _parse_safe_int(text: str) -> int:
    # A 400-digit integer would be accepted by Python and turn into a float (or
    # fail) in most other languages: reject what a double cannot hold exactly.
    if len(text.lstrip("-")) > 16:
        raise ValueError("integer out of range (more than 16 digits)")
    value = int(text)
    if abs(value) > MAX_SAFE_INTEGER:
        raise ValueError("integer out of range (beyond 2^53-1)")
    return value


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {_short(key, 40)!r}")
            seen.add(key)
    return obj


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether objects/arrays nest deeper than ``limit`` outside string literals.

    Checked before parsing, so the limit is the same for every implementation and
    no parser recursion depth is ever reached."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _parse_finite_float(text: str) -> float:
    # 1e400 would read as inf, which json.dumps writes as the non-JSON token
    # Infinity: a message could validate here and be unreadable once relayed.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


# A \uD800-\uDFFF escape may leave a lone surrogate in a string, which has no
# UTF-8 encoding: re-encoding the message (to relay it, or to quote it in a
# nack) would raise UnicodeEncodeError. Only frames with such an escape are checked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


def parse_json_object(frame: bytes) -> Dict[str, Any]:
    """Parse one frame as a UTF-8 JSON object; raise :class:`MalformedFrame`."""
    try:
        text = frame.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("byte-order mark before the JSON text")
        if json_depth_exceeds(text):
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        obj = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_finite_float,
            parse_int=_parse_safe_int,
            object_pairs_hook=_unique_keys,
        )
        if _SURROGATE_ESCAPE.search(text):
            try:
                json.dumps(obj, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("string holds a lone UTF-16 surrogate") from None
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise MalformedFrame(f"frame is not valid UTF-8 JSON: {_short(exc)}") from None
    if not isinstance(obj, dict):
        raise MalformedFrame("frame is JSON but not an object")
    return obj


def decode_envelope(frame: bytes) -> Envelope:
    """Decode and check the base envelope of one frame."""
    obj = parse_json_object(frame)
    data = obj.get("data")
    msg_type = data.get("msg_type", "") if isinstance(data, dict) else ""
    msg_type = msg_type if isinstance(msg_type, str) else ""
    missing = [k for k in _ENVELOPE_KEYS if k not in obj]
    if missing:
        raise InvalidEnvelope(f"envelope lacks {', '.join(missing)}", msg_type)
    version = obj["version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise InvalidEnvelope("envelope version must be an integer", msg_type)
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"version {version} not supported (supported: "
            f"{', '.join(str(v) for v in SUPPORTED_VERSIONS)})",
            msg_type,
        )
    for key in ("source_addr", "dest_addr"):
        if not isinstance(obj[key], str):
            raise InvalidEnvelope(f"envelope {key} must be a string", msg_type)
    if not isinstance(data, dict):
        raise InvalidEnvelope("envelope data must be an object", msg_type)
    if obj["dest_addr"] not in ADDRESSES:
        raise UnknownAddress(f"unknown dest_addr {_short(obj['dest_addr'])!r}", msg_type)
    return Envelope(version, obj["source_addr"], obj["dest_addr"], data)


def encode_envelope(app: str, data: Dict[str, Any]) -> bytes:
    """Serialise one PDU for application ``app`` as a complete frame."""
    payload = json.dumps(
        {"version": PROTOCOL_VERSION, "source_addr": app, "dest_addr": app, "data": data},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"encoded frame is {len(payload)} bytes, over {MAX_FRAME_BYTES}")
    return encode_frame(payload)


def _short(value: object, limit: int = 80) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
