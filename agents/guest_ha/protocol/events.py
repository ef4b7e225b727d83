"""The host's event kinds: the one place their names are spelled.

An :class:`EventKind` is a ``str``, so it goes into JSON, RPC payloads and
comparisons with plain strings unchanged (``EventKind.RECOVERED == "recovered"``).
The compute engine, the controller link, the server-group router and the
reporters all use these members, never their own string literals.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Dict


class WireEnum(str, Enum):
    """A ``str`` enum whose members are their wire spelling everywhere: in
    ``str()``, formatting, JSON, and as dict and set keys."""

    def __str__(self) -> str:
        return str(self.value)

    # Hash as the plain string (Enum hashes the member name): a value received
    # as a string finds its entry in a set or dict keyed by members.
    __hash__ = str.__hash__


class EventKind(WireEnum):
    """What the host learnt about a guest (``HeartbeatEvent.kind``)."""

    # Faults.
    HEARTBEAT_LOST = "heartbeat_lost"
    UNHEALTHY = "unhealthy"
    RESTART_TIMEOUT = "restart_timeout"
    VM_CRASHED = "vm_crashed"
    """Reported by the hypervisor side (QEMU died, guest panic, domain destroyed)."""
    # Everything else.
    RECOVERED = "recovered"
    REGISTERED = "registered"
    EXIT = "exit"
    SUSPENDED = "suspended"
    MISBEHAVING = "misbehaving"
    """The guest exceeded a rate limit; its channel is quiet for a while."""

    @property
    def is_fault(self) -> bool:
        return self in FAULT_KINDS


FAULT_KINDS = frozenset(
    {
        EventKind.HEARTBEAT_LOST,
        EventKind.UNHEALTHY,
        EventKind.RESTART_TIMEOUT,
        EventKind.VM_CRASHED,
    }
)
"""The kinds that are faults (reported, acted on, retracted only by ``recovered``)."""


class GuestEventKind(WireEnum):
    """What the guest's heartbeat machine tells its daemon (for its log)."""

    REGISTERED = "registered"
    """An ``init_ack`` (or a first challenge) confirmed the registration."""
    HOST_NACKED = "host_nacked"
    STALE = "stale"
    """No challenge for too long: registering again."""


class GuestEvent(str):
    """One guest-side event: a ``kind``, its ``detail`` fields, and (as the
    string it is) the log line the daemon writes for it."""

    kind: GuestEventKind
    detail: Dict[str, Any]

    def __new__(cls, kind: GuestEventKind, text: str, **detail: Any) -> "GuestEvent":
        event = super().__new__(cls, text)
        event.kind = kind
        event.detail = detail
        return event
