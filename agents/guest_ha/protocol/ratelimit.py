"""Token buckets driven by a clock value passed in (no clock is read here)."""

from __future__ import annotations

from typing import Dict, Optional


class TokenBucket:
    """Allows ``rate`` units per second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def consume(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if there are enough; return whether it was allowed."""
        self._refill(now)
        if self._tokens >= amount:
            self._tokens -= amount
            return True
        return False

    def take_up_to(self, now: float, amount: float) -> float:
        """Take as many tokens as are available, at most ``amount``; return how many."""
        self._refill(now)
        taken = min(self._tokens, amount)
        self._tokens -= taken
        return taken

    def refill_time(self, now: float, amount: float = 1.0) -> float:
        """Clock value at which ``amount`` tokens will be available."""
        self._refill(now)
        missing = amount - self._tokens
        return now if missing <= 0 else now + missing / self.rate


class LogLimiter:
    """Lets log lines through at a bounded rate per key, counting the rest.

    The one rate-limited logger of guest-ha: the channel ends use it directly
    (time passed in), the agents through ``guest_ha.runtime.RateLimitedLog``.
    Each key has its own bucket of ``burst`` lines refilled at ``rate`` per
    second. At most ``max_keys`` keys are remembered (hostile input cannot grow
    it without bound): beyond that, idle keys are forgotten first.
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 4096) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self.rate, self.burst, self.max_keys = rate, burst, max_keys
        TokenBucket(rate, burst, 0.0)  # same checks as the buckets
        self._keys: Dict[str, _Held] = {}

    def admit(self, now: float, key: str = "") -> Optional[int]:
        """``None`` if a line for ``key`` is to be dropped now; else how many were
        dropped since the last one let through (for :func:`suppressed_note`)."""
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) >= self.max_keys:
                self._forget(now)
            entry = self._keys[key] = _Held(TokenBucket(self.rate, self.burst, now))
        if entry.bucket.consume(now):
            suppressed, entry.count = entry.count, 0
            return suppressed
        entry.count += 1
        return None

    @property
    def suppressed(self) -> int:
        """Lines dropped so far and not yet reported by a later line."""
        return sum(entry.count for entry in self._keys.values())

    def _forget(self, now: float) -> None:
        idle = [
            key
            for key, entry in self._keys.items()
            if not entry.count and entry.bucket.available(now) >= self.burst
        ]
        for key in idle or list(self._keys)[: max(1, len(self._keys) // 2)]:
            del self._keys[key]


class _Held:
    __slots__ = ("bucket", "count")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket, self.count = bucket, 0


def suppressed_note(count: int) -> str:
    """What a log line that follows ``count`` dropped ones says about them."""
    return f" ({count} similar message(s) suppressed)" if count else ""
