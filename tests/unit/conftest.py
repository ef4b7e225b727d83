"""Shared helpers for the protocol-core unit tests.

Helpers are handed out through fixtures (``clock`` and the session-scoped
``proto`` namespace) rather than imported, so the test modules do not depend on
how pytest puts this directory on ``sys.path``. ``proto`` is session-scoped so
hypothesis tests may use it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import List, Optional, Tuple

import pytest

from channel_support import drain, take_output
from guest_ha.protocol import (
    GUEST_TO_HOST,
    HEARTBEAT,
    HOST_TO_GUEST,
    SERVER_GROUP,
    ChannelLimits,
    GuestChannel,
    GuestHeartbeat,
    HostChannel,
    HostPolicy,
)

UUID_A = "0b7d2f3c-5a4e-4d1b-9c6e-1f2a3b4c5d6e"
UUID_B = "9f8e7d6c-5b4a-4392-8170-fedcba987654"


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        assert seconds >= 0, "a monotonic clock never goes back"
        self.now += seconds
        return self.now

    def set(self, when: float) -> float:
        assert when >= self.now, "a monotonic clock never goes back"
        self.now = when
        return self.now


class NonceSequence:
    """Deterministic, valid, distinct nonces (16 lowercase hex digits)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"{self.count:016x}"


class Link:
    """A HostChannel and a GuestChannel joined by a lossless in-memory pipe.

    Time only moves through :meth:`run_until`, which jumps straight to each
    machine's next deadline, ticks both ends and pumps bytes until quiet. A
    machine whose deadline does not move after being ticked at it would make a
    real event loop spin; that fails the test.
    """

    def __init__(
        self,
        clock: FakeClock,
        *,
        interval_ms: int = 1000,
        policy: Optional[HostPolicy] = None,
        limits: Optional[ChannelLimits] = None,
        invocation_id: str = "inv-1",
        name: str = "vm-1",
        init_retry_s: float = 1.0,
        stale_intervals: float = 3.0,
    ) -> None:
        self.clock = clock
        self.host = HostChannel(
            policy or HostPolicy(), limits or ChannelLimits(), clock.now, NonceSequence()
        )
        self.guest_hb = GuestHeartbeat(
            name=name,
            interval_ms=interval_ms,
            invocation_id=invocation_id,
            init_retry_s=init_retry_s,
            stale_intervals=stale_intervals,
        )
        self.guest = GuestChannel(self.guest_hb, clock.now)
        self.guest_muted = False  # when True the guest's output is lost
        self.host_muted = False
        self.events: list = []
        self.guest_log: List[str] = []
        self.host_log: List[str] = []
        self.host_pdus: list = []  # server-group PDUs the host end received
        self.guest_pdus: list = []

    def start(self) -> None:
        now = self.clock.now
        self.host.connection_made(now)
        self.guest_hb.start(now)
        self.guest.tick(now)
        self.pump()

    def pump(self, max_rounds: int = 100) -> None:
        now = self.clock.now
        for _ in range(max_rounds):
            moved = False
            out = take_output(self.host)
            if out:
                if not self.host_muted:
                    self.guest.receive_data(out, now)
                moved = True
            out = take_output(self.guest)
            if out:
                if not self.guest_muted:
                    self.host.receive_data(out, now)
                moved = True
            self.collect()
            if not moved:
                return
        raise AssertionError("channels never went quiet: message storm")

    def collect(self) -> None:
        """Drain both ends into ``events``/``host_log``/``host_pdus`` and
        ``guest_log``/``guest_pdus``."""
        host = drain(self.host, self.clock.now)
        self.events += host.events
        self.host_log += host.log
        self.host_pdus += host.pdus
        guest = drain(self.guest)
        self.guest_log += guest.log
        self.guest_pdus += guest.pdus

    def deadlines(self) -> List[float]:
        return [d for d in (self.host.next_deadline(), self.guest.next_deadline()) if d is not None]

    def run_until(self, end: float, max_steps: int = 1_000_000) -> None:
        last: Tuple[float, Tuple[float, ...]] = (float("nan"), ())
        for _ in range(max_steps):
            due = [d for d in self.deadlines() if d <= end]
            if not due:
                self.clock.set(max(self.clock.now, end))
                self.host.tick(self.clock.now)
                self.guest.tick(self.clock.now)
                self.pump()
                return
            when = max(self.clock.now, min(due))
            state = (when, tuple(sorted(self.deadlines())))
            if state == last:
                raise AssertionError(f"a deadline at {when!r} did not move after tick()")
            last = state
            self.clock.set(when)
            self.host.tick(when)
            self.guest.tick(when)
            self.pump()
        raise AssertionError("run_until did not finish")

    def run_for(self, seconds: float) -> None:
        self.run_until(self.clock.now + seconds)

    def faults(self) -> list:
        return [e for e in self.events if e.is_fault]

    def kinds(self) -> List[str]:
        return [e.kind for e in self.events]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def proto() -> SimpleNamespace:
    """Helper classes and functions for the protocol tests."""
    return SimpleNamespace(
        FakeClock=FakeClock,
        NonceSequence=NonceSequence,
        Link=Link,
        UUID_A=UUID_A,
        UUID_B=UUID_B,
        HEARTBEAT=HEARTBEAT,
        SERVER_GROUP=SERVER_GROUP,
        GUEST_TO_HOST=GUEST_TO_HOST,
        HOST_TO_GUEST=HOST_TO_GUEST,
    )
