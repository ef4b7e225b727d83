"""Everything one end does with one channel's byte stream, without doing I/O.

:class:`HostChannel` is what the compute agent keeps per VM: decoder, rate
limits, validation, ``nack`` generation and the heartbeat machine.
:class:`GuestChannel` is the guest daemon's counterpart. Both are fed bytes and
clock values; both hand back bytes to write, events and rate-limited log lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from .envelope import HEARTBEAT, SERVER_GROUP, decode_envelope
from .errors import ProtocolError, RateLimited
from .framing import MAX_FRAME_BYTES, FrameDecoder
from .heartbeat import GuestHeartbeat, HeartbeatEvent, HostHeartbeat, HostPolicy, _default_nonce
from .messages import GUEST_TO_HOST, HOST_TO_GUEST, Message, nack, validate
from .ratelimit import TokenBucket


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

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if self.read_burst_bytes < self.max_frame:
            raise ValueError("read_burst_bytes must be at least max_frame")


class _Limited:
    """Log lines at a bounded rate, counting what was suppressed."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._bucket = TokenBucket(rate, burst, now)
        self.suppressed = 0
        self.lines: List[str] = []

    def add(self, now: float, line: str) -> None:
        if self._bucket.consume(now):
            if self.suppressed:
                line += f" ({self.suppressed} similar message(s) suppressed)"
                self.suppressed = 0
            self.lines.append(line)
        else:
            self.suppressed += 1

    def take(self) -> List[str]:
        lines, self.lines = self.lines, []
        return lines


class HostChannel:
    """The compute host's end of one VM's channel."""

    def __init__(
        self,
        policy: HostPolicy,
        limits: ChannelLimits,
        now: float,
        nonce_source: Callable[[], str] = _default_nonce,
    ) -> None:
        self.limits = limits
        self.heartbeat = HostHeartbeat(policy, nonce_source)
        self.decoder = FrameDecoder(limits.max_frame)
        self._app_buckets = {
            HEARTBEAT: TokenBucket(limits.heartbeat_rate, limits.heartbeat_burst, now),
            SERVER_GROUP: TokenBucket(limits.server_group_rate, limits.server_group_burst, now),
        }
        self._error_bucket = TokenBucket(limits.error_rate, limits.error_burst, now)
        self._read_bucket = TokenBucket(limits.read_bytes_per_s, limits.read_burst_bytes, now)
        self._log = _Limited(limits.log_rate, limits.log_burst, now)
        self._out = bytearray()
        self.server_group_inbox: List[Message] = []
        self.counters: Dict[str, int] = {
            "bytes_in": 0,
            "frames_in": 0,
            "bad_frames": 0,
            "rate_limited": 0,
            "nacks_sent": 0,
            "output_dropped": 0,
        }

    # -- connection ---------------------------------------------------------------
    def connection_made(self, now: float) -> None:
        self.decoder.reset()
        self._out.clear()
        self.heartbeat.connection_made(now)
        self._flush()

    def connection_lost(self, now: float) -> None:
        self.decoder.reset()
        self._out.clear()
        self.heartbeat.connection_lost(now)
        self.heartbeat.outbox.clear()

    # -- input --------------------------------------------------------------------
    def read_allowance(self, now: float) -> int:
        """How many bytes the shell may read from this guest now (0: pause reading)."""
        return int(self._read_bucket.available(now))

    def resume_reading_at(self, now: float) -> float:
        """When reading a paused guest may resume (a full frame's worth of budget)."""
        return self._read_bucket.refill_time(now, self.limits.max_frame)

    def receive_data(self, data: bytes, now: float) -> None:
        self.counters["bytes_in"] += len(data)
        self._read_bucket.take_up_to(now, len(data))
        for item in self.decoder.feed(data):
            self._receive_frame(item, now)
        self._flush()

    def _receive_frame(self, item: object, now: float) -> None:
        app = HEARTBEAT
        try:
            if isinstance(item, ProtocolError):
                raise item
            assert isinstance(item, bytes)
            envelope = decode_envelope(item)
            app = envelope.dest_addr
            msg = validate(envelope, GUEST_TO_HOST)
            if not self._app_buckets[app].consume(now):
                self.counters["rate_limited"] += 1
                raise RateLimited(f"{app} rate limit exceeded, message dropped", msg.msg_type)
            self.counters["frames_in"] += 1
            if app == HEARTBEAT:
                self.heartbeat.receive(msg, now)
            else:
                self.server_group_inbox.append(msg)
        except ProtocolError as exc:
            self.counters["bad_frames"] += 1
            if self._error_bucket.consume(now):
                self._log.add(now, f"rejected {exc.msg_type or 'frame'}: {exc.code}: {exc.message}")
                if exc.msg_type != "nack":  # a nack is never answered with a nack
                    self.queue(nack(app, exc.msg_type, f"{exc.code}: {exc.message}"))
                    self.counters["nacks_sent"] += 1

    # -- time ---------------------------------------------------------------------
    def tick(self, now: float) -> None:
        self.heartbeat.tick(now)
        self._flush()

    def next_deadline(self) -> Optional[float]:
        return self.heartbeat.next_deadline()

    # -- output -------------------------------------------------------------------
    def queue(self, msg: Message) -> bool:
        """Queue one PDU for the guest; drop it if the output buffer is full."""
        if not self.heartbeat.connected:
            return False
        frame = msg.encode()
        if len(self._out) + len(frame) > self.limits.max_output_bytes:
            self.counters["output_dropped"] += 1
            return False
        self._out += frame
        return True

    def pending_output(self) -> bytes:
        return bytes(self._out)

    def output_sent(self, count: int) -> None:
        del self._out[:count]

    @property
    def wants_write(self) -> bool:
        return bool(self._out)

    def take_events(self) -> List[HeartbeatEvent]:
        events, self.heartbeat.events = self.heartbeat.events, []
        return events

    def take_log(self) -> List[str]:
        return self._log.take()

    # -- lifecycle (from the hypervisor side) ----------------------------------------
    def suspend(self, now: float, reason: str) -> None:
        self.heartbeat.suspend(now, reason)
        self._flush()

    def resume(self, now: float) -> None:
        self.heartbeat.resume(now)  # may challenge at once
        self._flush()

    def expect_registration(self, now: float, reason: str) -> None:
        self.heartbeat.expect_registration(now, reason)
        self._flush()

    def report_fault(self, now: float, kind: str, reason: str, **detail: object) -> None:
        self.heartbeat.report_fault(now, kind, reason, **detail)
        self._flush()

    def flush(self) -> None:
        """Move PDUs the heartbeat machine produced to the output buffer (for callers
        that drive ``self.heartbeat`` directly; the methods above do it themselves)."""
        self._flush()

    def _flush(self) -> None:
        if self.heartbeat.outbox:
            outbox, self.heartbeat.outbox = self.heartbeat.outbox, []
            for msg in outbox:
                self.queue(msg)


class GuestChannel:
    """The guest daemon's end of the channel."""

    def __init__(self, heartbeat: GuestHeartbeat, now: float, max_frame: int = MAX_FRAME_BYTES):
        self.heartbeat = heartbeat
        self.decoder = FrameDecoder(max_frame)
        self._error_bucket = TokenBucket(5.0, 10.0, now)
        self._log = _Limited(1.0, 5.0, now)
        self._out = bytearray()
        self.max_output_bytes = 64 * 1024
        self.server_group_inbox: List[Message] = []
        self.bad_frames = 0
        self.output_dropped = 0

    def receive_data(self, data: bytes, now: float) -> None:
        for item in self.decoder.feed(data):
            app = HEARTBEAT
            try:
                if isinstance(item, ProtocolError):
                    raise item
                assert isinstance(item, bytes)
                envelope = decode_envelope(item)
                app = envelope.dest_addr
                msg = validate(envelope, HOST_TO_GUEST)
                if app == HEARTBEAT:
                    self.heartbeat.receive(msg, now)
                else:
                    self.server_group_inbox.append(msg)
            except ProtocolError as exc:
                self.bad_frames += 1
                if self._error_bucket.consume(now):
                    self._log.add(
                        now, f"rejected {exc.msg_type or 'frame'} from host: {exc.message}"
                    )
                    if exc.msg_type != "nack":
                        self.queue(nack(app, exc.msg_type, f"{exc.code}: {exc.message}"))
        self._flush()

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
        frame = msg.encode()
        if len(self._out) + len(frame) > self.max_output_bytes:
            self.output_dropped += 1
            return False
        self._out += frame
        return True

    def pending_output(self) -> bytes:
        return bytes(self._out)

    def output_sent(self, count: int) -> None:
        del self._out[:count]

    def discard_output(self) -> None:
        self._out.clear()

    def take_log(self) -> List[str]:
        lines = self._log.take()
        events, self.heartbeat.events = self.heartbeat.events, []
        return events + lines

    def _flush(self) -> None:
        if self.heartbeat.outbox:
            outbox, self.heartbeat.outbox = self.heartbeat.outbox, []
            for msg in outbox:
                self.queue(msg)
