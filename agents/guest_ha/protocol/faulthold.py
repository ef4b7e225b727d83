"""Hold a missed-heartbeat fault until the hypervisor confirms it (sans-I/O).

A missed heartbeat can race a pause: the guest stops answering a few
milliseconds before the hypervisor's "suspended" event reaches the host. Where
the host can ask the hypervisor (libvirt mode), ``heartbeat_lost`` is held
until the answer comes; the events after it wait behind it, in order.

- domain running: the fault is real; everything held is reported, in order;
- domain not running (paused, stopped, ...): the pause explains the silence;
  the fault is retracted on the channel (no event: it was never reported),
  heartbeating is suspended as for that lifecycle operation, and the held
  events are reported without the fault and its ``recovered``.

The caller does the I/O: it asks the hypervisor when :meth:`FaultHold.offer`
returns a token, and passes the answer (or, on its own timeout, "running")
to :meth:`FaultHold.answer` with that token. A stale token is ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Tuple

from .events import EventKind
from .heartbeat import HeartbeatEvent

if TYPE_CHECKING:  # pragma: no cover
    from .channel import HostChannel


class FaultHold:
    """One VM's held events and the token of the question put to the hypervisor."""

    def __init__(self) -> None:
        self._held: List[HeartbeatEvent] = []
        self.token = 0
        """The current question; answers with another token are stale."""

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def offer(
        self, event: HeartbeatEvent, can_confirm: bool
    ) -> Tuple[List[HeartbeatEvent], Optional[int]]:
        """Events to report now, and a token if the hypervisor must be asked now.

        ``can_confirm``: whether the caller can ask the hypervisor at all (if
        not, nothing is ever held)."""
        if self._held or (can_confirm and event.kind == EventKind.HEARTBEAT_LOST):
            first = not self._held
            self._held.append(event)
            if first:
                self.token += 1
                return [], self.token
            return [], None
        return [event], None

    def answer(
        self, token: int, running: bool, state: str, channel: "HostChannel", now: float
    ) -> Optional[List[HeartbeatEvent]]:
        """The hypervisor's answer to question ``token``: the events to report
        (``None`` for a stale token). Not running: the fault is retracted and
        ``channel`` suspended for ``state``."""
        if not self._held or token != self.token:
            return None
        held, self._held = self._held, []
        self.token += 1
        if running:
            return held
        channel.retract_fault(now, EventKind.HEARTBEAT_LOST, state)
        return [e for e in held if e.kind not in (EventKind.HEARTBEAT_LOST, EventKind.RECOVERED)]
