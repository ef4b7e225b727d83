"""Reconnect backoff for one VM's channel (no clock is read here).

The delay doubles after every failed connect and after every connection that
did not stay up for ``stable_s``; only a connection that stayed up that long
resets it. A socket that accepts and closes at once is thus retried ever more
slowly (up to ``max_s``) instead of several times a second for ever.
"""

from __future__ import annotations

from typing import Optional


class ReconnectBackoff:
    """Delays before the next connect attempt."""

    def __init__(self, initial_s: float, max_s: float, stable_s: float) -> None:
        if not 0 < initial_s <= max_s or stable_s < 0:
            raise ValueError("need 0 < initial_s <= max_s and stable_s >= 0")
        self.initial_s = initial_s
        self.max_s = max_s
        self.stable_s = stable_s
        self.delay = initial_s
        self._connected_at: Optional[float] = None

    def reset(self) -> None:
        """Someone (libvirt) says the socket is new: try again quickly."""
        self.delay = self.initial_s
        self._connected_at = None

    def failed(self) -> float:
        """A connect attempt failed: the delay before the next one."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.max_s)
        return delay

    def connected(self, now: float) -> None:
        self._connected_at = now

    def lost(self, now: float) -> float:
        """The connection ended: the delay before reconnecting."""
        if self._connected_at is not None and now - self._connected_at >= self.stable_s:
            self.delay = self.initial_s
        self._connected_at = None
        return self.failed()
