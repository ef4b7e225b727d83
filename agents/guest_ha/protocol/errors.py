"""Typed errors raised (or returned) by the protocol core for bad input.

Every error has a short machine-readable ``code`` and, where it is known, the
``msg_type`` of the message that caused it, so a receiver can answer with a
``nack`` naming the original message type.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: the peer sent something the protocol does not allow."""

    code = "protocol_error"

    def __init__(self, message: str, msg_type: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.msg_type = msg_type

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ProtocolError)
            and type(self) is type(other)
            and self.message == other.message
            and self.msg_type == other.msg_type
        )

    def __hash__(self) -> int:
        return hash((type(self), self.message, self.msg_type))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class FrameTooLarge(ProtocolError):
    """A frame exceeded the maximum frame size; it was dropped."""

    code = "frame_too_large"


class MalformedFrame(ProtocolError):
    """A frame is not UTF-8 JSON text holding an object."""

    code = "malformed_json"


class InvalidEnvelope(ProtocolError):
    """The base envelope lacks a key or has a key of the wrong type."""

    code = "invalid_envelope"


class UnsupportedVersion(InvalidEnvelope):
    """The envelope's ``version`` is not one this implementation speaks."""

    code = "unsupported_version"


class UnknownAddress(InvalidEnvelope):
    """``dest_addr`` names no application layer known here."""

    code = "unknown_address"


class UnknownMessageType(ProtocolError):
    """``data.msg_type`` is missing or unknown for this application and direction."""

    code = "unknown_msg_type"


class InvalidField(ProtocolError):
    """A PDU field is missing, of the wrong type or out of its limits."""

    code = "invalid_field"


class RateLimited(ProtocolError):
    """The sender exceeded its message rate; the message was dropped."""

    code = "rate_limited"


class NotRegistered(ProtocolError):
    """A heartbeat PDU arrived that is only valid after ``init``."""

    code = "not_registered"
