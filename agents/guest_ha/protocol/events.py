"""The host's event kinds: the one place their names are spelled.

An :class:`EventKind` is a ``str``, so it goes into JSON, RPC payloads and
comparisons with plain strings unchanged (``EventKind.RECOVERED == "recovered"``).
The compute engine, the controller link, the server-group router and the
reporters all use these members, never their own string literals.
"""

from __future__ import annotations

from enum import Enum


class EventKind(str, Enum):
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

    def __str__(self) -> str:
        return str(self.value)

    # Hash as the plain string (Enum hashes the member name): a kind received
    # as a string finds its entry in a set or dict keyed by members.
    __hash__ = str.__hash__

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
