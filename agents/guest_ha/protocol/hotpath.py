"""Fast paths for the two PDUs of every heartbeat round trip.

``challenge`` and ``challenge_response`` are most of the channel's traffic. In
their canonical form (the key order and compact separators our encoders write)
they are matched and built here without the JSON module and the PDU table. Each
function handles only a strict subset of inputs for which the general path
(``decode_envelope`` + ``validate``, ``Message.encode``) gives exactly the same
result, and returns ``None`` for anything else, which then takes the general
path with its full checks and error reporting. tests/unit/test_hotpath.py holds
both paths to the same output.
"""

from __future__ import annotations

import re
from typing import Optional

from .envelope import HEARTBEAT
from .messages import HEALTHY, MAX_SEQ, UNHEALTHY, Message

_PREFIX = '{"version":1,"source_addr":"heartbeat","dest_addr":"heartbeat","data":'

# Printable ASCII without '"' and '\\': encoded as is by json.dumps, and a valid
# text field (no control characters).
_PLAIN = r"[ !#-\[\]-~]"

_RESPONSE_RE = re.compile(
    re.escape(_PREFIX).encode() + rb'\{"msg_type":"challenge_response","seq":(0|[1-9][0-9]{0,15}),'
    rb'"nonce":"([0-9a-f]{8,64})","health":"(healthy|unhealthy)"'
    rb'(?:,"reason":"(' + _PLAIN.encode() + rb'{0,256})")?\}\}\Z'
)
_CHALLENGE_RE = re.compile(
    re.escape(_PREFIX).encode()
    + rb'\{"msg_type":"challenge","seq":(0|[1-9][0-9]{0,15}),"nonce":"([0-9a-f]{8,64})"\}\}\Z'
)
_NONCE_OK = re.compile(r"[0-9a-f]{8,64}\Z")
_REASON_OK = re.compile(_PLAIN + r"{0,256}\Z")

_CHALLENGE_FRAME = "\n" + _PREFIX + '{"msg_type":"challenge","seq":%d,"nonce":"%s"}}\n'
_RESPONSE_FRAME = (
    "\n"
    + _PREFIX
    + '{"msg_type":"challenge_response","seq":%d,"nonce":"%s","health":"%s","reason":"%s"}}\n'
)


def decode_challenge_response(frame: bytes) -> Optional[Message]:
    """A canonical, valid ``challenge_response`` frame as its Message, else None."""
    match = _RESPONSE_RE.match(frame)
    if match is None:
        return None
    seq_text, nonce, health, reason = match.groups()
    seq = int(seq_text)
    if seq > MAX_SEQ:
        return None
    return Message(
        HEARTBEAT,
        "challenge_response",
        {
            "seq": seq,
            "nonce": nonce.decode("ascii"),
            "health": health.decode("ascii"),
            "reason": reason.decode("ascii") if reason is not None else "",
        },
    )


def decode_challenge(frame: bytes) -> Optional[Message]:
    """A canonical, valid ``challenge`` frame as its Message, else None."""
    match = _CHALLENGE_RE.match(frame)
    if match is None:
        return None
    seq = int(match.group(1))
    if seq > MAX_SEQ:
        return None
    return Message(HEARTBEAT, "challenge", {"seq": seq, "nonce": match.group(2).decode("ascii")})


def _plain_seq(seq: object) -> bool:
    return type(seq) is int and 0 <= seq <= MAX_SEQ


def encode_fast(msg: Message) -> Optional[bytes]:
    """The frame of a canonical ``challenge`` or ``challenge_response``, else None
    (the caller then uses ``msg.encode()``, which gives the same bytes)."""
    if msg.app != HEARTBEAT:
        return None
    fields = msg.fields
    if msg.msg_type == "challenge":
        if tuple(fields) != ("seq", "nonce"):
            return None
        seq, nonce = fields["seq"], fields["nonce"]
        if not _plain_seq(seq) or type(nonce) is not str or not _NONCE_OK.match(nonce):
            return None
        return (_CHALLENGE_FRAME % (seq, nonce)).encode("ascii")
    if msg.msg_type == "challenge_response":
        if tuple(fields) != ("seq", "nonce", "health", "reason"):
            return None
        seq, nonce, health, reason = (fields[k] for k in ("seq", "nonce", "health", "reason"))
        if (
            not _plain_seq(seq)
            or type(nonce) is not str
            or not _NONCE_OK.match(nonce)
            or type(health) is not str
            or health not in (HEALTHY, UNHEALTHY)
            or type(reason) is not str
            or not _REASON_OK.match(reason)
        ):
            return None
        return (_RESPONSE_FRAME % (seq, nonce, health, reason)).encode("ascii")
    return None
