"""PDU definitions and strict validation for both application layers.

Each PDU is a JSON object in the envelope's ``data`` with a ``msg_type`` key.
Which PDUs are legal depends on the direction of travel; a host never accepts
a PDU only the host may send, and vice versa. Unknown extra fields are ignored
(forward compatibility) except those a guest must never set, such as
``source_instance`` on a broadcast.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from .envelope import (
    HEARTBEAT,
    MAX_JSON_DEPTH,
    MAX_SAFE_INTEGER,
    SERVER_GROUP,
    Envelope,
    encode_envelope,
)
from .errors import InvalidField, UnknownMessageType

GUEST_TO_HOST = "guest_to_host"
HOST_TO_GUEST = "host_to_guest"

MAX_BROADCAST_BYTES = 3050
"""Largest ``data`` of a broadcast, measured as its compact UTF-8 JSON encoding."""
MAX_SEQ = 2**53 - 1
MAX_INTERVAL_FIELD_MS = 2**31 - 1
MAX_NAME_CHARS = 64
MAX_REASON_CHARS = 256
MAX_LOG_MSG_CHARS = 512
MAX_STATUS_BYTES = 3050

HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
CORRECTIVE_ACTIONS = ("log", "reboot", "stop")

_TOKEN_RE = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_NONCE_RE = re.compile(r"[0-9a-f]{8,64}\Z")
_UUID_RE = re.compile(r"[0-9a-fA-F-]{32,36}\Z")

Validator = Callable[[str, Any], Any]


def _text(max_chars: int, *, pattern: Optional["re.Pattern[str]"] = None) -> Validator:
    def check(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidField(f"{name} must be a string")
        if len(value) > max_chars:
            raise InvalidField(f"{name} longer than {max_chars} characters")
        if pattern is not None and not pattern.match(value):
            raise InvalidField(f"{name} has an invalid format")
        if any(ord(c) < 0x20 for c in value):
            raise InvalidField(f"{name} must not contain control characters")
        return value

    return check


def _integer(low: int, high: int) -> Validator:
    def check(name: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidField(f"{name} must be an integer")
        if not low <= value <= high:
            raise InvalidField(f"{name} must be between {low} and {high}")
        return value

    return check


def _choice(*allowed: str) -> Validator:
    def check(name: str, value: Any) -> str:
        if value not in allowed:
            raise InvalidField(f"{name} must be one of {', '.join(allowed)}")
        return str(value)

    return check


def _json_value(max_bytes: int, *, object_only: bool = False) -> Validator:
    def check(name: str, value: Any) -> Any:
        if object_only and not isinstance(value, dict):
            raise InvalidField(f"{name} must be an object")
        problem = _json_problem(value, 3)  # data's members start at depth 3
        if problem:
            raise InvalidField(f"{name} {problem}")
        size = len(json_size_bytes(value))
        if size > max_bytes:
            raise InvalidField(f"{name} is {size} bytes, over the {max_bytes}-byte limit")
        return value

    return check


def _json_problem(value: Any, depth: int) -> str:
    """Why ``value`` (a container at ``depth``) breaks §4.3, or ``""``; what a receiver
    would reject as ``malformed_json`` is refused here before it is sent."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return ""
    if isinstance(value, int):
        return "" if abs(value) <= MAX_SAFE_INTEGER else "holds an integer beyond 2^53-1"
    if isinstance(value, float):
        return "" if math.isfinite(value) else "holds a non-finite number"
    if isinstance(value, (dict, list)):
        if depth > MAX_JSON_DEPTH:
            return f"nests deeper than {MAX_JSON_DEPTH} levels"
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
    return ""


def json_size_bytes(value: Any) -> bytes:
    """Compact UTF-8 JSON encoding of ``value``: what the size limits measure."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class PduSpec:
    required: Mapping[str, Validator]
    optional: Mapping[str, Validator] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    forbidden: Tuple[str, ...] = ()


_seq = _integer(0, MAX_SEQ)
_invocation = _text(64, pattern=_TOKEN_RE)
_nack = PduSpec(
    required={"orig_msg_type": _text(64), "log_msg": _text(MAX_LOG_MSG_CHARS)},
)

SPECS: Dict[Tuple[str, str], Dict[str, PduSpec]] = {
    (HEARTBEAT, GUEST_TO_HOST): {
        "init": PduSpec(
            required={
                "invocation_id": _invocation,
                "name": _text(MAX_NAME_CHARS),
                "interval_ms": _integer(1, MAX_INTERVAL_FIELD_MS),
            },
            optional={"corrective_action": _choice(*CORRECTIVE_ACTIONS)},
        ),
        "challenge_response": PduSpec(
            required={
                "seq": _seq,
                "nonce": _text(64, pattern=_NONCE_RE),
                "health": _choice(HEALTHY, UNHEALTHY),
            },
            optional={"reason": _text(MAX_REASON_CHARS)},
            defaults={"reason": ""},
        ),
        "exit": PduSpec(
            required={"invocation_id": _invocation},
            optional={"reason": _text(MAX_REASON_CHARS)},
            defaults={"reason": ""},
        ),
        "nack": _nack,
    },
    (HEARTBEAT, HOST_TO_GUEST): {
        "init_ack": PduSpec(
            required={
                "invocation_id": _invocation,
                "interval_ms": _integer(1, MAX_INTERVAL_FIELD_MS),
            },
        ),
        "challenge": PduSpec(
            required={"seq": _seq, "nonce": _text(64, pattern=_NONCE_RE)},
        ),
        "nack": _nack,
    },
    (SERVER_GROUP, GUEST_TO_HOST): {
        "status_query": PduSpec(required={"seq": _seq}),
        "broadcast": PduSpec(
            required={"data": _json_value(MAX_BROADCAST_BYTES)},
            forbidden=("source_instance",),
        ),
        "nack": _nack,
    },
    (SERVER_GROUP, HOST_TO_GUEST): {
        "status_response": PduSpec(
            required={"seq": _seq, "data": _json_value(MAX_STATUS_BYTES, object_only=True)},
        ),
        "status_response_done": PduSpec(required={"seq": _seq}),
        "notification": PduSpec(
            required={"data": _json_value(MAX_STATUS_BYTES, object_only=True)},
        ),
        "broadcast": PduSpec(
            required={
                "source_instance": _text(36, pattern=_UUID_RE),
                "data": _json_value(MAX_BROADCAST_BYTES),
            },
        ),
        "nack": _nack,
    },
}


@dataclass(frozen=True)
class Message:
    """One validated PDU: its application, type and fields (without ``msg_type``)."""

    app: str
    msg_type: str
    fields: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def encode(self) -> bytes:
        """The complete frame (``\\n{json}\\n``) carrying this PDU."""
        data = {"msg_type": self.msg_type}
        data.update(self.fields)
        return encode_envelope(self.app, data)


def validate(envelope: Envelope, direction: str) -> Message:
    """Check ``envelope.data`` against the PDU table for ``direction``.

    Raises :class:`UnknownMessageType` or :class:`InvalidField`; both carry the
    original ``msg_type`` so the receiver can send a ``nack``.
    """
    app = envelope.dest_addr
    table = SPECS[(app, direction)]
    data = envelope.data
    msg_type = data.get("msg_type")
    if not isinstance(msg_type, str) or msg_type not in table:
        shown = msg_type if isinstance(msg_type, str) else ""
        raise UnknownMessageType(
            f"{app} does not accept msg_type {shown[:64]!r} {direction.replace('_', ' ')}",
            shown[:64],
        )
    spec = table[msg_type]
    fields: Dict[str, Any] = {}
    try:
        for name, check in spec.required.items():
            if name not in data:
                raise InvalidField(f"{msg_type} lacks field {name}")
            fields[name] = check(name, data[name])
        for name, check in spec.optional.items():
            if name in data:
                fields[name] = check(name, data[name])
            elif name in spec.defaults:
                fields[name] = spec.defaults[name]
        for name in spec.forbidden:
            if name in data:
                raise InvalidField(f"{msg_type} must not carry {name}: the host sets it")
    except InvalidField as exc:
        raise InvalidField(exc.message, msg_type) from None
    return Message(app, msg_type, fields)


def make(app: str, msg_type: str, direction: str, **fields: Any) -> Message:
    """Build a PDU, checking it against the same table the receiver uses."""
    data = {"msg_type": msg_type}
    data.update(fields)
    return validate(Envelope(1, app, app, data), direction)


def nack(app: str, orig_msg_type: str, log_msg: str) -> Message:
    """A ``nack`` naming the offending message type and a human-readable reason."""
    return Message(
        app,
        "nack",
        {
            "orig_msg_type": _printable(orig_msg_type[:64]),
            "log_msg": _printable(log_msg)[:MAX_LOG_MSG_CHARS],
        },
    )


def _printable(text: str) -> str:
    """Control characters become spaces, lone surrogates U+FFFD (both are echoed
    from hostile input; the receiver's ``_text`` check rejects the first, UTF-8
    cannot encode the second)."""
    return "".join(
        " " if ord(c) < 0x20 else "\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text
    )
