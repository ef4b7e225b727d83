"""Token buckets driven by a clock value passed in (no clock is read here)."""

from __future__ import annotations


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
