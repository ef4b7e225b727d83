"""Reading a channel end in tests through its own calls: ``send_output`` for the
bytes, ``next_items`` for everything else (sorted by type here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

from guest_ha.protocol import (
    GuestChannel,
    GuestPdu,
    HeartbeatEvent,
    HostChannel,
    HostPdu,
    LogRecord,
    Message,
)


def take_output(channel: Union[HostChannel, GuestChannel]) -> bytes:
    """All buffered output, as a peer that accepts every byte would take it."""
    out = bytearray()

    def write(data: bytes) -> int:
        out.extend(data)
        return len(data)

    channel.send_output(write)
    return bytes(out)


@dataclass
class Drained:
    """One ``next_items`` call's items, by type."""

    pdus: List[Message] = field(default_factory=list)
    events: list = field(default_factory=list)
    """``HeartbeatEvent`` (host end) or ``GuestEvent`` (guest end)."""
    records: List[Tuple[int, str]] = field(default_factory=list)

    @property
    def log(self) -> List[str]:
        """The log lines; at the guest end its events first (each is its log line)."""
        texts = [text for _, text in self.records]
        if self.events and not isinstance(self.events[0], HeartbeatEvent):
            return [str(e) for e in self.events] + texts
        return texts


def drain(channel: Union[HostChannel, GuestChannel], now: Optional[float] = None) -> Drained:
    """Drain ``channel`` once (the host end needs ``now``)."""
    if isinstance(channel, HostChannel):
        assert now is not None, "the host end's drain takes the time"
        items: list = list(channel.next_items(now))
    else:
        items = list(channel.next_items())
    out = Drained()
    for item in items:
        if isinstance(item, (GuestPdu, HostPdu)):
            out.pdus.append(item.msg)
        elif isinstance(item, LogRecord):
            out.records.append((item.level, item.text))
        else:
            out.events.append(item)
    return out


def peek_output(channel: Union[HostChannel, GuestChannel]) -> bytes:
    """The buffered output, offered to a peer that accepts nothing (it stays)."""
    offered = [b""]

    def write(data: bytes) -> int:
        offered[0] = data
        return 0

    channel.send_output(write)
    return offered[0]
