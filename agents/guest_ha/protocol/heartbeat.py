"""Heartbeat state machines for both ends of the channel (sans-I/O).

Neither machine reads a clock or touches a socket. The caller passes the
current monotonic time in seconds to every method, sends what accumulates in
``outbox`` and acts on what accumulates in ``events``, and calls ``tick`` no
later than ``next_deadline()``.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol

from .envelope import HEARTBEAT
from .errors import NotRegistered
from .events import FAULT_KINDS, EventKind, GuestEvent, GuestEventKind
from .messages import (
    GUEST_TO_HOST,
    HEALTHY,
    HOST_TO_GUEST,
    MAX_REASON_CHARS,
    UNHEALTHY,
    Message,
    _printable,
    make,
)
from .transitions import (
    GuestInput,
    GuestState,
    HostInput,
    HostState,
    guest_handles,
    guest_next,
    host_handles,
    host_next,
)

# Host-side event kinds (owned by events.EventKind), under their historic names.
HEARTBEAT_LOST = EventKind.HEARTBEAT_LOST
UNHEALTHY_FAULT = EventKind.UNHEALTHY
RESTART_TIMEOUT = EventKind.RESTART_TIMEOUT
VM_CRASHED = EventKind.VM_CRASHED
RECOVERED = EventKind.RECOVERED
REGISTERED = EventKind.REGISTERED
EXIT = EventKind.EXIT
SUSPENDED = EventKind.SUSPENDED


@dataclass(frozen=True)
class HeartbeatEvent:
    """Something the host learnt about a guest. ``at`` is the caller's clock value."""

    kind: EventKind
    at: float
    detail: Dict[str, Any] = field(default_factory=dict)

    @property
    def is_fault(self) -> bool:
        return self.kind in FAULT_KINDS


@dataclass(frozen=True)
class HostPolicy:
    """Operator policy for heartbeating, applied to whatever the guest asks for."""

    min_interval_ms: int = 100
    max_interval_ms: int = 60000
    missed_threshold: int = 1
    restart_timeout_s: float = 60.0
    """Seconds a running VM has to (re-)register before that is a fault; 0 disables."""
    resume_grace_s: float = 0.5
    """Extra time to answer the first challenge after a pause or migration ends: a
    guest that was just resumed (under TCG especially) can need a moment."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_interval_ms <= self.max_interval_ms:
            raise ValueError("need 1 <= min_interval_ms <= max_interval_ms")
        if self.missed_threshold < 1:
            raise ValueError("missed_threshold must be at least 1")
        if self.restart_timeout_s < 0:
            raise ValueError("restart_timeout_s must not be negative")
        if self.resume_grace_s < 0:
            raise ValueError("resume_grace_s must not be negative")

    def clamp(self, interval_ms: int) -> int:
        return max(self.min_interval_ms, min(self.max_interval_ms, interval_ms))


class _NoncePool:
    """16-hex-digit nonces from the OS's random source, read 4 KiB at a time
    (one ``getrandom`` per 512 challenges, not one each); thread-safe."""

    _BATCH = 512

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hex = ""
        self._at = 0

    def __call__(self) -> str:
        with self._lock:
            if self._at >= len(self._hex):
                self._hex, self._at = secrets.token_hex(8 * self._BATCH), 0
            at = self._at
            self._at = at + 16
        return self._hex[at : at + 16]


_default_nonce = _NoncePool()


class HeartbeatView(Protocol):
    """A read-only view of a host heartbeat machine, for status, metrics and
    recovery (``HostChannel.heartbeat_view``): they read it, never drive it."""

    @property
    def state(self) -> HostState: ...
    @property
    def health(self) -> str: ...
    @property
    def health_reason(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def corrective_action(self) -> Optional[str]: ...
    @property
    def interval_ms(self) -> Optional[int]: ...
    @property
    def misses(self) -> int: ...
    @property
    def last_rtt_s(self) -> Optional[float]: ...
    @property
    def challenges_sent(self) -> int: ...
    @property
    def responses_ok(self) -> int: ...
    @property
    def missed_total(self) -> int: ...
    @property
    def stale_responses(self) -> int: ...
    @property
    def last_response_at(self) -> Optional[float]: ...


class HostHeartbeat:
    """The compute host's view of one guest's heartbeat registration."""

    # States and transitions: transitions.HostState, HOST_TRANSITIONS (§6.2).
    AWAITING_INIT = HostState.AWAITING_INIT
    MONITORING = HostState.MONITORING
    EXITED = HostState.EXITED
    SUSPENDED = HostState.SUSPENDED

    def __init__(
        self, policy: HostPolicy, nonce_source: Callable[[], str] = _default_nonce
    ) -> None:
        self.policy = policy
        self._nonce_source = nonce_source
        self.state: HostState = self.SUSPENDED
        self.connected = False
        self.health = HEALTHY
        self.health_reason = ""
        self.invocation_id: Optional[str] = None
        self.name = ""
        self.corrective_action: Optional[str] = None
        self.interval_ms: Optional[int] = None
        self.requested_interval_ms: Optional[int] = None
        self.seq = 0
        self.misses = 0
        self.last_rtt_s: Optional[float] = None
        self.last_response_at: Optional[float] = None
        self.challenges_sent = 0
        self.responses_ok = 0
        self.stale_responses = 0
        self.missed_total = 0
        self._nonce = ""
        self._answered = True
        self._challenge_sent_at = 0.0
        self._next_challenge: Optional[float] = None
        self._restart_deadline: Optional[float] = None
        self.outbox: List[Message] = []
        self.events: List[HeartbeatEvent] = []

    # -- inputs from the I/O shell -------------------------------------------------
    def connection_made(self, now: float) -> None:
        """The channel to the guest is up: the VM runs and should (re-)register."""
        self.connected = True
        if host_handles(self.state, HostInput.CHANNEL_UP):
            self.state = host_next(self.state, HostInput.CHANNEL_UP)
            self._next_challenge = None
            self._arm_restart(now)

    def connection_lost(self, now: float) -> None:
        self.connected = False
        self.suspend(now, "channel_lost")

    def suspend(self, now: float, reason: str) -> None:
        """Stop challenging without a fault (lifecycle operation, channel down)."""
        was_monitoring = self.state == self.MONITORING
        self.state = host_next(self.state, HostInput.SUSPEND)
        self._next_challenge = None
        self._restart_deadline = None
        self._answered = True
        if was_monitoring:
            self._emit(SUSPENDED, now, reason=reason)

    def expect_registration(self, now: float, reason: str) -> None:
        """The guest OS is (re)starting (boot, reboot): no fault now, but it must
        register within ``restart_timeout``."""
        self.suspend(now, reason)
        self.state = host_next(self.state, HostInput.EXPECT_REGISTRATION)
        self._arm_restart(now)

    def report_fault(self, now: float, kind: str, reason: str, **detail: Any) -> None:
        """A fault seen outside the channel (e.g. libvirt says QEMU crashed).

        Heartbeating stops; the next healthy answer after a new registration
        emits ``recovered``.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        self.suspend(now, kind)
        if self.health != kind:
            self._set_health(kind, now, reason, **detail)

    def retract_fault(self, kind: str) -> None:
        """Forget a fault that turned out to be explained (the VM was paused).

        No event: the caller has not reported the fault yet.
        """
        if self.health == kind:
            self.health, self.health_reason = HEALTHY, ""
            self.misses = 0

    def resume(self, now: float) -> None:
        """A lifecycle operation ended (resume, migration done): heartbeat again.

        A guest still registered is challenged at once; otherwise it has
        ``restart_timeout`` to register, and gets one probe challenge: a guest
        that believes it is registered (it was, with the source host of a live
        migration) answers it, the answer is refused with a ``nack``, and the
        guest registers at once instead of after its own stale timeout.
        """
        registered = self.invocation_id is not None
        event = HostInput.RESUME_REGISTERED if registered else HostInput.RESUME
        if not self.connected or not host_handles(self.state, event):
            return
        self.state = host_next(self.state, event)
        if self.state == self.MONITORING:
            self.misses = 0
            self._send_challenge(now)
            if self._next_challenge is not None:
                self._next_challenge += self.policy.resume_grace_s
        else:
            self._arm_restart(now)
            self.seq += 1
            self.outbox.append(
                Message(HEARTBEAT, "challenge", {"seq": self.seq, "nonce": self._nonce_source()})
            )

    def receive(self, msg: Message, now: float) -> None:
        """Handle one validated guest-to-host heartbeat PDU.

        Raises :class:`NotRegistered` for a response while not monitoring, so the
        shell can ``nack`` it and the guest re-registers.
        """
        handler = getattr(self, "_on_" + msg.msg_type, None)
        if handler is not None:
            handler(msg, now)

    def tick(self, now: float) -> None:
        if self._restart_deadline is not None and now >= self._restart_deadline:
            self._restart_deadline = None
            if self.state != self.MONITORING:
                self._set_health(
                    RESTART_TIMEOUT,
                    now,
                    f"no registration within {self.policy.restart_timeout_s:g} s",
                    timeout_s=self.policy.restart_timeout_s,
                )
        if (
            self.state == self.MONITORING
            and self._next_challenge is not None
            and now >= self._next_challenge
        ):
            if not self._answered:
                self.misses += 1
                self.missed_total += 1
                if self.misses >= self.policy.missed_threshold and self.health != HEARTBEAT_LOST:
                    age = None if self.last_response_at is None else now - self.last_response_at
                    self._set_health(
                        HEARTBEAT_LOST,
                        now,
                        f"{self.misses} challenge(s) unanswered",
                        misses=self.misses,
                        last_response_age_s=age,
                    )
            self._send_challenge(now)

    def next_deadline(self) -> Optional[float]:
        challenge, restart = self._next_challenge, self._restart_deadline
        if challenge is None or restart is None:
            return restart if challenge is None else challenge
        return min(challenge, restart)

    # -- PDU handlers -----------------------------------------------------------
    def _on_init(self, msg: Message, now: float) -> None:
        requested = msg["interval_ms"]
        interval = self.policy.clamp(requested)
        same = self.state == self.MONITORING and msg["invocation_id"] == self.invocation_id
        previous = self.invocation_id
        old_interval = self.interval_ms
        self.invocation_id = msg["invocation_id"]
        self.name = msg["name"]
        self.corrective_action = msg.fields.get("corrective_action")
        self.requested_interval_ms = requested
        self.interval_ms = interval
        self.outbox.append(
            make(
                HEARTBEAT,
                "init_ack",
                HOST_TO_GUEST,
                invocation_id=self.invocation_id,
                interval_ms=interval,
            )
        )
        if same:
            # A repeated or stale init: acknowledged, schedule kept (re-timed if the
            # interval changed, so the new interval applies from the next challenge).
            if interval != old_interval:
                self._next_challenge = self._challenge_sent_at + interval / 1000.0
            return
        self.state = host_next(self.state, HostInput.REGISTER)
        self._next_challenge = None  # a new registration starts a fresh schedule
        self.misses = 0
        self._restart_deadline = None
        self._emit(
            REGISTERED,
            now,
            invocation_id=self.invocation_id,
            name=self.name,
            interval_ms=interval,
            requested_interval_ms=requested,
            corrective_action=self.corrective_action,
            previous_invocation_id=previous,
        )
        self._send_challenge(now)

    def _on_challenge_response(self, msg: Message, now: float) -> None:
        if self.state != self.MONITORING:
            raise NotRegistered("send init first", "challenge_response")
        if self._answered or msg["seq"] != self.seq or msg["nonce"] != self._nonce:
            self.stale_responses += 1
            return
        self._answered = True
        self.misses = 0
        self.responses_ok += 1
        self.last_rtt_s = now - self._challenge_sent_at
        self.last_response_at = now
        if msg["health"] == UNHEALTHY:
            reason = msg["reason"] or "guest reported unhealthy"
            if self.health != UNHEALTHY_FAULT:
                self._set_health(UNHEALTHY_FAULT, now, reason)
            self.health_reason = reason
        elif self.health != HEALTHY:
            self._set_health(HEALTHY, now, "")

    def _on_exit(self, msg: Message, now: float) -> None:
        if self.invocation_id is not None and msg["invocation_id"] != self.invocation_id:
            self.stale_responses += 1
            return
        cleared = self.health if self.health != HEALTHY else None
        self.health, self.health_reason = HEALTHY, ""
        self.state = host_next(self.state, HostInput.EXIT)
        self._next_challenge = None
        self._restart_deadline = None
        self._emit(EXIT, now, reason=msg["reason"], cleared_fault=cleared)

    def _on_nack(self, msg: Message, now: float) -> None:
        pass  # the guest complained about something we sent; the shell logs it

    # -- helpers ------------------------------------------------------------------
    def _send_challenge(self, now: float) -> None:
        assert self.interval_ms is not None
        self.seq += 1
        self._nonce = self._nonce_source()
        self._answered = False
        self._challenge_sent_at = now
        # Fixed delay from the actual send: if the host itself ran late, the guest
        # still gets one full interval to answer (no false fault from our own stall).
        self._next_challenge = now + self.interval_ms / 1000.0
        self.challenges_sent += 1
        self.outbox.append(Message(HEARTBEAT, "challenge", {"seq": self.seq, "nonce": self._nonce}))

    def _arm_restart(self, now: float) -> None:
        if self.policy.restart_timeout_s > 0 and self._restart_deadline is None:
            self._restart_deadline = now + self.policy.restart_timeout_s

    def _set_health(self, health: str, now: float, reason: str, **detail: Any) -> None:
        previous = self.health
        self.health, self.health_reason = health, reason
        if health == HEALTHY:
            self._emit(RECOVERED, now, previous_fault=previous)
        else:
            self._emit(health, now, reason=reason, **detail)

    def _emit(self, kind: str, now: float, **detail: Any) -> None:
        if self.interval_ms is not None:
            detail.setdefault("interval_ms", self.interval_ms)
        if self.invocation_id is not None:
            detail.setdefault("invocation_id", self.invocation_id)
        self.events.append(HeartbeatEvent(EventKind(kind), now, detail))


class GuestHeartbeat:
    """The guest daemon's side of heartbeat registration."""

    # States and transitions: transitions.GuestState, GUEST_TRANSITIONS (§6.4).
    IDLE = GuestState.IDLE
    REGISTERING = GuestState.REGISTERING
    REGISTERED = GuestState.REGISTERED
    EXITED = GuestState.EXITED

    def __init__(
        self,
        *,
        name: str,
        interval_ms: int,
        invocation_id: str,
        corrective_action: Optional[str] = None,
        init_retry_s: float = 1.0,
        stale_intervals: float = 3.0,
    ) -> None:
        self.name = name
        self.interval_ms = interval_ms
        self.effective_interval_ms = interval_ms
        self.invocation_id = invocation_id
        self.corrective_action = corrective_action
        self.init_retry_s = init_retry_s
        self.stale_intervals = stale_intervals
        self.state: GuestState = self.IDLE
        self.host_present = True
        self.health = HEALTHY
        self.reason = ""
        self.challenges_answered = 0
        self._next_init: Optional[float] = None
        self._last_challenge = 0.0
        self.outbox: List[Message] = []
        self.events: List[GuestEvent] = []
        # Reject our own bad configuration early, with the receiver's rules.
        self._init_message()

    def _init_message(self) -> Message:
        fields: Dict[str, Any] = {
            "invocation_id": self.invocation_id,
            "name": self.name,
            "interval_ms": self.interval_ms,
        }
        if self.corrective_action:
            fields["corrective_action"] = self.corrective_action
        return make(HEARTBEAT, "init", GUEST_TO_HOST, **fields)

    def start(self, now: float) -> None:
        self.state = guest_next(self.state, GuestInput.START)
        self._send_init(now)

    def host_connected(self, now: float) -> None:
        """The port stopped reporting hang-up: a host process (re)connected."""
        self.host_present = True
        if guest_handles(self.state, GuestInput.HOST_CONNECTED):
            self.state = guest_next(self.state, GuestInput.HOST_CONNECTED)
            self._send_init(now)

    def host_disconnected(self, now: float) -> None:
        """No host process is connected; writes now would be delivered stale later."""
        self.host_present = False

    def set_health(self, health: str, reason: str = "") -> None:
        if health not in (HEALTHY, UNHEALTHY):
            raise ValueError(f"health must be {HEALTHY!r} or {UNHEALTHY!r}")
        self.health, self.reason = health, _printable(reason)[:MAX_REASON_CHARS]

    def receive(self, msg: Message, now: float) -> None:
        if self.state in (self.IDLE, self.EXITED):
            return
        if msg.msg_type == "init_ack":
            if msg["invocation_id"] == self.invocation_id:
                if self.state != self.REGISTERED:
                    interval = msg["interval_ms"]
                    self.events.append(
                        GuestEvent(
                            GuestEventKind.REGISTERED,
                            f"registered, interval {interval} ms",
                            interval_ms=interval,
                        )
                    )
                self.state = guest_next(self.state, GuestInput.INIT_ACK)
                self.effective_interval_ms = msg["interval_ms"]
                self._last_challenge = now
        elif msg.msg_type == "challenge":
            self._last_challenge = now
            if self.state == self.REGISTERING:
                self.events.append(
                    GuestEvent(
                        GuestEventKind.REGISTERED,
                        "registered (challenged before init_ack)",
                        interval_ms=self.effective_interval_ms,
                    )
                )
            self.state = guest_next(self.state, GuestInput.CHALLENGE)
            self.challenges_answered += 1
            self.outbox.append(
                Message(
                    HEARTBEAT,
                    "challenge_response",
                    {
                        "seq": msg["seq"],
                        "nonce": msg["nonce"],
                        "health": self.health,
                        "reason": self.reason,
                    },
                )
            )
        elif msg.msg_type == "nack":
            orig, text = msg["orig_msg_type"], msg["log_msg"]
            self.events.append(
                GuestEvent(
                    GuestEventKind.HOST_NACKED,
                    f"host nacked {orig}: {text}",
                    orig_msg_type=orig,
                    log_msg=text,
                )
            )
            if msg["orig_msg_type"] in ("challenge_response", "init"):
                self.state = guest_next(self.state, GuestInput.NACK)
                if msg["orig_msg_type"] == "challenge_response":
                    self._send_init(now)

    def tick(self, now: float) -> None:
        if self.state == self.REGISTERING:
            if self._next_init is None or now >= self._next_init:
                self._send_init(now)
        # ">=" against the very value next_deadline() returns: a tick at the
        # deadline must act, or an event loop would spin on it.
        elif self.state == self.REGISTERED and now >= self._stale_at():
            after = self._stale_after()
            self.events.append(
                GuestEvent(
                    GuestEventKind.STALE,
                    f"no challenge for {after:.1f} s: registering again",
                    silent_s=after,
                )
            )
            self.state = guest_next(self.state, GuestInput.STALE)
            self._send_init(now)

    def next_deadline(self) -> Optional[float]:
        if self.state == self.REGISTERING:
            return self._next_init
        if self.state == self.REGISTERED:
            return self._stale_at()
        return None

    def _stale_after(self) -> float:
        return self.stale_intervals * self.effective_interval_ms / 1000.0 + 0.5

    def _stale_at(self) -> float:
        return self._last_challenge + self._stale_after()

    def exit(self, now: float, reason: str = "") -> None:
        """Deregister gracefully (SIGTERM): the host raises no fault."""
        if self.state in (self.REGISTERING, self.REGISTERED) and self.host_present:
            # While no host is connected the PDU would only arrive stale, later.
            self.outbox.append(
                make(
                    HEARTBEAT,
                    "exit",
                    GUEST_TO_HOST,
                    invocation_id=self.invocation_id,
                    reason=_printable(reason)[:MAX_REASON_CHARS],
                )
            )
        self.state = guest_next(self.state, GuestInput.SHUTDOWN)

    def _send_init(self, now: float) -> None:
        # Until an init_ack says otherwise, the effective interval is the one asked
        # for (docs/protocol.md §6.4): a previous host's answer no longer holds.
        if self.state == self.REGISTERING:
            self.effective_interval_ms = self.interval_ms
        if self.host_present:
            self.outbox.append(self._init_message())
        self._next_init = now + self.init_retry_s
