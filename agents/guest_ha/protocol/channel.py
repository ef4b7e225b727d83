"""Everything one end does with one channel's byte stream, without doing I/O.

:class:`HostChannel` is what the compute agent keeps per VM: decoder, rate
limits, validation, ``nack`` generation and the heartbeat machine.
:class:`GuestChannel` is the guest daemon's counterpart. Both are fed bytes and
clock values; both hand back bytes to write, events and rate-limited log lines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

from .envelope import HEARTBEAT, SERVER_GROUP, decode_envelope
from .errors import ProtocolError, RateLimited
from .events import EventKind, GuestEvent
from .framing import MAX_FRAME_BYTES, FrameDecoder
from .heartbeat import (
    EXIT,
    RECOVERED,
    REGISTERED,
    SUSPENDED,
    GuestHeartbeat,
    HeartbeatEvent,
    HeartbeatView,
    HostHeartbeat,
    HostPolicy,
    _default_nonce,
)
from .hotpath import decode_challenge, decode_challenge_response, encode_fast
from .messages import GUEST_TO_HOST, HOST_TO_GUEST, Message, nack, validate
from .ratelimit import LogLimiter, TokenBucket, suppressed_note


@dataclass(frozen=True)
class ChannelLimits:
    """Per-VM limits that keep one hostile guest from affecting anything else."""

    max_frame: int = MAX_FRAME_BYTES
    heartbeat_rate: float = 20.0
    """Heartbeat PDUs per second accepted from one guest (a 100 ms guest needs 10)."""
    heartbeat_burst: float = 40.0
    server_group_rate: float = 50.0
    server_group_burst: float = 100.0
    error_rate: float = 5.0
    """Bad frames per second that are answered with a nack and logged; the rest are dropped."""
    error_burst: float = 10.0
    read_bytes_per_s: float = 256 * 1024
    """Bytes per second read from one guest; past that its socket is not read for a while."""
    read_burst_bytes: float = 64 * 1024
    max_output_bytes: int = 64 * 1024
    log_rate: float = 1.0
    log_burst: float = 5.0
    event_rate_per_min: float = 4.0
    """Events a guest can cause at will (``registered``, ``exit``, channel-loss
    ``suspended``, and ``recovered``, which is held back, not lost) passed on per
    minute; faults are never limited."""
    event_burst: float = 4.0
    misbehaving_quiet_s: float = 60.0
    """A ``misbehaving`` episode ends after this long without hitting any limit."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if self.read_burst_bytes < self.max_frame:
            raise ValueError("read_burst_bytes must be at least max_frame")


class _Limited:
    """Log lines at a bounded rate (one budget for every level), counting what was
    suppressed."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._limiter = LogLimiter(rate, burst)
        self.records: List[Tuple[int, str]] = []

    @property
    def suppressed(self) -> int:
        return self._limiter.suppressed

    def add(self, now: float, line: str, level: int = logging.WARNING) -> bool:
        held = self._limiter.admit(now)
        if held is None:
            return False
        self.records.append((level, line + suppressed_note(held)))
        return True

    def take_records(self) -> List[Tuple[int, str]]:
        records, self.records = self.records, []
        return records


#: Events a guest can cause at will (by re-registering, exiting, or making its
#: channel flap); they are rate limited per VM. Faults and ``recovered`` never are.
GUEST_TRIGGERED_EVENTS = frozenset({REGISTERED, EXIT, SUSPENDED})
MISBEHAVING = EventKind.MISBEHAVING


@dataclass(frozen=True)
class GuestPdu:
    """A server-group PDU from the guest: validated and within the rate limit.
    The VM's identity is the channel's, never anything in the PDU."""

    msg: Message


@dataclass(frozen=True)
class LogRecord:
    """A log line about this guest, under the per-VM log limit."""

    level: int
    text: str


@dataclass(frozen=True)
class HostPdu:
    """A server-group PDU from the host, validated (the guest end's item)."""

    msg: Message


ChannelItem = Union[GuestPdu, HeartbeatEvent, LogRecord]
"""What :meth:`HostChannel.next_items` hands out."""

GuestItem = Union[HostPdu, GuestEvent, LogRecord]
"""What :meth:`GuestChannel.next_items` hands out."""


class _ChannelEnd:
    """What both ends of the channel share: the receive loop (frames, envelope,
    PDU validation for the direction this end receives) and bounded output."""

    #: The direction of the PDUs this end receives.
    RECEIVES = GUEST_TO_HOST
    #: The hot PDU this end receives, matched in its canonical form (hotpath.py).
    _decode_fast: Callable[[bytes], Optional[Message]] = staticmethod(decode_challenge_response)

    def __init__(self, max_frame: int) -> None:
        self.decoder = FrameDecoder(max_frame)
        self._out = bytearray()
        self._server_group_inbox: List[Message] = []

    # -- the receive loop
    def _receive_frames(self, data: bytes, now: float) -> None:
        for item in self.decoder.feed(data):
            app = HEARTBEAT
            try:
                if isinstance(item, ProtocolError):
                    raise item
                assert isinstance(item, bytes)
                msg = self._decode_fast(item)
                if msg is None:
                    envelope = decode_envelope(item)
                    app = envelope.dest_addr
                    msg = validate(envelope, self.RECEIVES)
                self._accept(msg, now)
            except ProtocolError as exc:
                self._rejected(app, exc, now)
        self._flush()

    def _accept(self, msg: Message, now: float) -> None:
        """A valid PDU: heartbeat PDUs to the machine, server-group ones to the inbox."""
        if msg.app == HEARTBEAT:
            self._heartbeat_receive(msg, now)
        else:
            self._server_group_inbox.append(msg)

    def _heartbeat_receive(self, msg: Message, now: float) -> None:
        raise NotImplementedError

    def _rejected(self, app: str, exc: ProtocolError, now: float) -> None:
        raise NotImplementedError

    # -- bounded output
    def _output_limit(self) -> int:
        raise NotImplementedError

    def _output_dropped(self) -> None:
        raise NotImplementedError

    def _enqueue(self, msg: Message) -> bool:
        """Queue one PDU's frame unless the output buffer would overflow."""
        frame = encode_fast(msg) or msg.encode()
        if len(self._out) + len(frame) > self._output_limit():
            self._output_dropped()
            return False
        self._out += frame
        return True

    @property
    def wants_write(self) -> bool:
        """Whether output is waiting (the shell then waits for the peer to be writable)."""
        return bool(self._out)

    def send_output(self, write: Callable[[bytes], int]) -> int:
        """Offer the buffered output to ``write`` (a non-blocking send), which
        returns how many bytes it took; those leave the buffer, the rest waits
        for the next call. Returns that count. If ``write`` raises, nothing
        leaves the buffer and the exception propagates."""
        if not self._out:
            return 0
        sent = write(bytes(self._out))
        del self._out[:sent]
        return sent

    def _flush(self) -> None:
        raise NotImplementedError


class HostChannel(_ChannelEnd):
    """The compute host's end of one VM's channel."""

    def __init__(
        self,
        policy: HostPolicy,
        limits: ChannelLimits,
        now: float,
        nonce_source: Callable[[], str] = _default_nonce,
    ) -> None:
        super().__init__(limits.max_frame)
        self.limits = limits
        self._heartbeat = HostHeartbeat(policy, nonce_source)
        self._app_buckets = {
            HEARTBEAT: TokenBucket(limits.heartbeat_rate, limits.heartbeat_burst, now),
            SERVER_GROUP: TokenBucket(limits.server_group_rate, limits.server_group_burst, now),
        }
        self._error_bucket = TokenBucket(limits.error_rate, limits.error_burst, now)
        self._read_bucket = TokenBucket(limits.read_bytes_per_s, limits.read_burst_bytes, now)
        self._log = _Limited(limits.log_rate, limits.log_burst, now)
        self._event_bucket = TokenBucket(limits.event_rate_per_min / 60.0, limits.event_burst, now)
        self._registration_expected = False
        self._misbehaving_until: Optional[float] = None
        self._notices: List[HeartbeatEvent] = []
        self._reported_fault: Optional[str] = None
        self._pending_recovery: Optional[HeartbeatEvent] = None
        self.counters: Dict[str, int] = {
            "bytes_in": 0,
            "frames_in": 0,
            "bad_frames": 0,
            "rate_limited": 0,
            "nacks_sent": 0,
            "nacks_suppressed": 0,
            "output_dropped": 0,
            "events_suppressed": 0,
            "read_pauses": 0,
            "misbehaving_episodes": 0,
        }
        self.nacks_by_code: Dict[str, int] = {}

    # -- connection ---------------------------------------------------------------
    def connection_made(self, now: float) -> None:
        self.decoder.reset()
        self._out.clear()
        self._heartbeat.connection_made(now)
        self._flush()

    def connection_lost(self, now: float) -> None:
        self.decoder.reset()
        self._out.clear()
        self._heartbeat.connection_lost(now)
        self._heartbeat.outbox.clear()

    # -- input --------------------------------------------------------------------
    def read_allowance(self, now: float) -> int:
        """How many bytes the shell may read from this guest now (0: pause reading)."""
        return int(self._read_bucket.available(now))

    def resume_reading_at(self, now: float) -> float:
        """When reading a paused guest may resume (a full frame's worth of budget).

        The shell calls this when it pauses reading, so it also counts the pause."""
        self.counters["read_pauses"] += 1
        self._limit_hit(now, "read_bytes")
        return self._read_bucket.refill_time(now, self.limits.max_frame)

    def receive_data(self, data: bytes, now: float) -> None:
        self.counters["bytes_in"] += len(data)
        self._read_bucket.take_up_to(now, len(data))
        self._receive_frames(data, now)

    def _accept(self, msg: Message, now: float) -> None:
        if not self._app_buckets[msg.app].consume(now):
            self.counters["rate_limited"] += 1
            self._limit_hit(now, f"{msg.app}_rate")
            raise RateLimited(f"{msg.app} rate limit exceeded, message dropped", msg.msg_type)
        self.counters["frames_in"] += 1
        super()._accept(msg, now)

    def _heartbeat_receive(self, msg: Message, now: float) -> None:
        self._heartbeat.receive(msg, now)

    def _rejected(self, app: str, exc: ProtocolError, now: float) -> None:
        self.counters["bad_frames"] += 1
        self.reject(now, app, exc.msg_type, exc.code, exc.message)

    def reject(self, now: float, app: str, msg_type: str, code: str, text: str) -> bool:
        """Answer a rejected PDU with a nack and a log line, within the nack limit
        (§7, §8); return whether the nack was queued. Every rejection the host
        makes goes through here, including the application's (``not_enabled``)."""
        if not self._error_bucket.consume(now):
            self.counters["nacks_suppressed"] += 1
            self._limit_hit(now, "nacks")
            return False
        self._log.add(now, f"rejected {msg_type or 'frame'}: {code}: {text}")
        if msg_type == "nack":  # a nack is never answered with a nack
            return False
        return self._send_nack(nack(app, msg_type, f"{code}: {text}"))

    def relay_nack(self, now: float, msg: Message) -> bool:
        """Pass on a nack someone else (the controller) made for this guest, within
        the same per-channel nack limit as the host's own nacks."""
        if not self._error_bucket.consume(now):
            self.counters["nacks_suppressed"] += 1
            self._limit_hit(now, "nacks")
            return False
        return self._send_nack(msg)

    def _send_nack(self, msg: Message) -> bool:
        code = str(msg["log_msg"]).split(": ", 1)[0][:32]
        if not self.queue(msg):
            return False
        self.counters["nacks_sent"] += 1
        self.nacks_by_code[code] = self.nacks_by_code.get(code, 0) + 1
        return True

    def log(self, now: float, line: str, level: int = logging.INFO) -> None:
        """A log line about this guest, under the per-VM log limit (§8)."""
        self._log.add(now, line, level)

    def _limit_hit(self, now: float, limit: str) -> None:
        """Start (or extend) a ``misbehaving`` episode: one event per episode."""
        if self._misbehaving_until is None or now >= self._misbehaving_until:
            self.counters["misbehaving_episodes"] += 1
            detail = {
                "limit": limit,
                "counters": dict(self.counters),
                "quiet_s": self.limits.misbehaving_quiet_s,
            }
            self._notices.append(HeartbeatEvent(MISBEHAVING, now, detail))
            self._log.add(now, f"misbehaving: exceeded the {limit} limit", logging.WARNING)
        self._misbehaving_until = now + self.limits.misbehaving_quiet_s

    def is_misbehaving(self, now: float) -> bool:
        """Whether a limit was hit within the last ``misbehaving_quiet_s``."""
        return self._misbehaving_until is not None and now < self._misbehaving_until

    @property
    def heartbeat_view(self) -> HeartbeatView:
        """The heartbeat machine, read-only (status, metrics, recovery)."""
        return self._heartbeat

    def carry_fault(self, health: str, reason: str) -> None:
        """This VM's previous channel ended with fault ``health`` still active
        (the hypervisor undefined and redefined the domain: Nova's stop/start):
        keep it, so the next healthy answer reports ``recovered``."""
        self._heartbeat.health, self._heartbeat.health_reason = health, reason

    def retract_fault(self, now: float, kind: str, state: str) -> None:
        """The hypervisor explains a held fault (the domain is ``state``, not
        running): forget it and suspend; the ``suspended`` notice is not news."""
        self._heartbeat.retract_fault(kind)
        self.suspend(now, state)
        self._take_events()

    # -- time ---------------------------------------------------------------------
    def tick(self, now: float) -> None:
        self._heartbeat.tick(now)
        self._flush()

    def next_deadline(self) -> Optional[float]:
        return self._heartbeat.next_deadline()

    # -- output -------------------------------------------------------------------
    def queue(self, msg: Message) -> bool:
        """Queue one PDU for the guest; drop it if the output buffer is full."""
        if not self._heartbeat.connected:
            return False
        return self._enqueue(msg)

    def _output_limit(self) -> int:
        return self.limits.max_output_bytes

    def _output_dropped(self) -> None:
        self.counters["output_dropped"] += 1

    def _take_events(self, now: Optional[float] = None) -> List[HeartbeatEvent]:
        """Events to report, with guest-triggered ones within the per-VM event limit.

        Faults always pass. A ``recovered`` (or an ``exit`` that clears a fault)
        over the limit is held back; if the same fault comes again meanwhile, both
        are dropped (the controller still
        sees the VM in that fault, which it was), else the recovery is reported
        once the limit allows. ``now`` defaults to each event's time."""
        events, self._heartbeat.events = self._heartbeat.events, []
        out: List[HeartbeatEvent] = []
        at = now
        for event in events:
            at = event.at if now is None else now
            if event.is_fault:
                if self._pending_recovery is not None:
                    if event.kind == self._reported_fault:
                        self._pending_recovery = None  # recovered + same fault: coalesced
                        self.counters["events_suppressed"] += 2
                        continue
                    out.append(self._pending_recovery)
                    self._pending_recovery = None
                self._reported_fault = event.kind
                out.append(event)
            elif event.kind == RECOVERED or (
                event.kind == EXIT and event.detail.get("cleared_fault")
            ):
                # Both clear the reported fault: one budget, held back when over it.
                if self._event_bucket.consume(at):
                    self._reported_fault = None
                    out.append(event)
                else:
                    self._pending_recovery = event
                    self._limit_hit(at, "events")
            elif self._event_allowed(event, at):
                if event.kind == EXIT:
                    self._reported_fault, self._pending_recovery = None, None
                out.append(event)
        pending = self._pending_recovery
        if pending is not None and at is not None and self._event_bucket.consume(at):
            out.append(pending)
            self._pending_recovery = self._reported_fault = None
        notices, self._notices = self._notices, []  # after filtering: it may add one
        return out + notices

    def _event_allowed(self, event: HeartbeatEvent, now: float) -> bool:
        if event.kind not in GUEST_TRIGGERED_EVENTS:
            return True
        if event.kind == SUSPENDED and event.detail.get("reason") != "channel_lost":
            return True  # a lifecycle operation the hypervisor reported
        if event.kind == REGISTERED and self._registration_expected:
            self._registration_expected = False
            return True  # after a restart the hypervisor reported
        if self._event_bucket.consume(now):
            return True
        self.counters["events_suppressed"] += 1
        self._limit_hit(now, "events")
        return False

    def next_items(self, now: float) -> List[ChannelItem]:
        """Everything that happened since the last call, in one list, in this
        order: the guest's server-group PDUs, the events to report (within the
        per-VM event limit, as :meth:`_take_events`), then the log records.
        Handling a PDU may add log lines: call again until it returns []."""
        if not (
            self._server_group_inbox
            or self._heartbeat.events
            or self._notices
            or self._log.records
            or self._pending_recovery is not None
        ):
            return []  # the common case (a heartbeat round trip): nothing to hand out
        inbox, self._server_group_inbox = self._server_group_inbox, []
        items: List[ChannelItem] = [GuestPdu(msg) for msg in inbox]
        items += self._take_events(now)
        items += [LogRecord(level, text) for level, text in self._log.take_records()]
        return items

    # -- lifecycle (from the hypervisor side) ----------------------------------------
    def suspend(self, now: float, reason: str) -> None:
        self._heartbeat.suspend(now, reason)
        self._flush()

    def resume(self, now: float) -> None:
        self._heartbeat.resume(now)  # may challenge at once
        self._flush()

    def expect_registration(self, now: float, reason: str) -> None:
        self._heartbeat.expect_registration(now, reason)
        # The hypervisor restarted the guest: its next registration is not churn.
        self._registration_expected = True
        self._flush()

    def report_fault(self, now: float, kind: str, reason: str, **detail: object) -> None:
        self._heartbeat.report_fault(now, kind, reason, **detail)
        self._flush()

    def _flush(self) -> None:
        if self._heartbeat.outbox:
            outbox, self._heartbeat.outbox = self._heartbeat.outbox, []
            for msg in outbox:
                self.queue(msg)


class GuestChannel(_ChannelEnd):
    """The guest daemon's end of the channel."""

    RECEIVES = HOST_TO_GUEST
    _decode_fast = staticmethod(decode_challenge)

    def __init__(self, heartbeat: GuestHeartbeat, now: float, max_frame: int = MAX_FRAME_BYTES):
        super().__init__(max_frame)
        self.heartbeat = heartbeat
        self._error_bucket = TokenBucket(5.0, 10.0, now)
        self._log = _Limited(1.0, 5.0, now)
        self.max_output_bytes = 64 * 1024
        self.bad_frames = 0
        self.output_dropped = 0

    def receive_data(self, data: bytes, now: float) -> None:
        self._receive_frames(data, now)

    def _heartbeat_receive(self, msg: Message, now: float) -> None:
        self.heartbeat.receive(msg, now)

    def _rejected(self, app: str, exc: ProtocolError, now: float) -> None:
        self.bad_frames += 1
        if self._error_bucket.consume(now):
            self._log.add(now, f"rejected {exc.msg_type or 'frame'} from host: {exc.message}")
            if exc.msg_type != "nack":
                self.queue(nack(app, exc.msg_type, f"{exc.code}: {exc.message}"))

    def host_connected(self, now: float) -> None:
        # Whatever was queued for the previous host is stale: registration starts afresh.
        self._out.clear()
        self.decoder.reset()
        self.heartbeat.host_connected(now)
        self._flush()

    def host_disconnected(self, now: float) -> None:
        self.heartbeat.host_disconnected(now)

    def tick(self, now: float) -> None:
        self.heartbeat.tick(now)
        self._flush()

    def next_deadline(self) -> Optional[float]:
        return self.heartbeat.next_deadline()

    def exit(self, now: float, reason: str = "") -> None:
        """Deregister gracefully; the ``exit`` PDU is queued at once."""
        self.heartbeat.exit(now, reason)
        self._flush()

    def queue(self, msg: Message) -> bool:
        return self._enqueue(msg)

    def _output_limit(self) -> int:
        return self.max_output_bytes

    def _output_dropped(self) -> None:
        self.output_dropped += 1

    def discard_output(self) -> None:
        self._out.clear()

    def next_items(self) -> List[GuestItem]:
        """Everything that happened since the last call, in one list, in this
        order: the host's server-group PDUs, the heartbeat machine's events
        (``GuestEvent``, a ``str``: its log line), then the log records."""
        inbox, self._server_group_inbox = self._server_group_inbox, []
        items: List[GuestItem] = [HostPdu(msg) for msg in inbox]
        items += self.heartbeat.events
        self.heartbeat.events = []
        items += [LogRecord(level, text) for level, text in self._log.take_records()]
        return items

    def _flush(self) -> None:
        if self.heartbeat.outbox:
            outbox, self.heartbeat.outbox = self.heartbeat.outbox, []
            for msg in outbox:
                self.queue(msg)
