"""Sans-I/O protocol core shared by the guest daemon and the compute agent.

Nothing here opens a socket or reads a clock: callers feed bytes and the
current monotonic time, and collect bytes to send and events.
"""

from .channel import (
    ChannelItem,
    ChannelLimits,
    GuestChannel,
    GuestItem,
    GuestPdu,
    HostChannel,
    HostPdu,
    LogRecord,
)
from .envelope import HEARTBEAT, PROTOCOL_VERSION, SERVER_GROUP, Envelope, decode_envelope
from .errors import (
    FrameTooLarge,
    InvalidEnvelope,
    InvalidField,
    MalformedFrame,
    NotRegistered,
    ProtocolError,
    RateLimited,
    UnknownAddress,
    UnknownMessageType,
    UnsupportedVersion,
)
from .events import FAULT_KINDS, EventKind
from .framing import MAX_FRAME_BYTES, FrameDecoder, encode_frame
from .heartbeat import (
    GuestHeartbeat,
    HeartbeatEvent,
    HostHeartbeat,
    HostPolicy,
)
from .messages import GUEST_TO_HOST, HOST_TO_GUEST, MAX_BROADCAST_BYTES, Message, make, validate
from .ratelimit import TokenBucket

__all__ = [
    "FAULT_KINDS",
    "GUEST_TO_HOST",
    "HEARTBEAT",
    "HOST_TO_GUEST",
    "MAX_BROADCAST_BYTES",
    "MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "SERVER_GROUP",
    "ChannelItem",
    "ChannelLimits",
    "Envelope",
    "EventKind",
    "FrameDecoder",
    "FrameTooLarge",
    "GuestChannel",
    "GuestHeartbeat",
    "GuestItem",
    "GuestPdu",
    "HeartbeatEvent",
    "HostChannel",
    "HostHeartbeat",
    "HostPdu",
    "HostPolicy",
    "InvalidEnvelope",
    "InvalidField",
    "LogRecord",
    "MalformedFrame",
    "Message",
    "NotRegistered",
    "ProtocolError",
    "RateLimited",
    "TokenBucket",
    "UnknownAddress",
    "UnknownMessageType",
    "UnsupportedVersion",
    "decode_envelope",
    "encode_frame",
    "make",
    "validate",
]
