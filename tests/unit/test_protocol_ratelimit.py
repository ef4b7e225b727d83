"""TokenBucket: rate limiting driven by a clock value passed in."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guest_ha.protocol import TokenBucket
from guest_ha.protocol.ratelimit import LogLimiter, suppressed_note
from guest_ha.runtime import RateLimitedLog

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (1, 0), (-1, 5), (5, -1)])
def test_rate_and_burst_must_be_positive(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


def test_starts_full_and_allows_a_burst():
    b = TokenBucket(rate=2, burst=5, now=10.0)
    assert b.available(10.0) == 5
    assert [b.consume(10.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert b.available(10.0) == 0


def test_refills_at_rate_up_to_burst():
    b = TokenBucket(rate=2, burst=5, now=0.0)
    for _ in range(5):
        b.consume(0.0)
    assert b.available(0.5) == pytest.approx(1.0)
    assert b.consume(0.5) is True
    assert b.consume(0.5) is False
    assert b.available(100.0) == 5  # capped at burst


def test_consume_amount():
    b = TokenBucket(rate=10, burst=10, now=0.0)
    assert b.consume(0.0, 7) is True
    assert b.consume(0.0, 7) is False  # not enough: nothing taken
    assert b.available(0.0) == pytest.approx(3)
    assert b.consume(0.0, 3) is True


def test_clock_going_backwards_is_harmless():
    b = TokenBucket(rate=1, burst=3, now=100.0)
    b.consume(100.0, 3)
    assert b.available(50.0) == 0  # no refill, no negative tokens
    assert b.available(101.0) == pytest.approx(1)


def test_take_up_to():
    b = TokenBucket(rate=100, burst=1000, now=0.0)
    assert b.take_up_to(0.0, 300) == 300
    assert b.take_up_to(0.0, 5000) == 700
    assert b.take_up_to(0.0, 10) == 0
    assert b.take_up_to(1.0, 10_000) == pytest.approx(100)


def test_refill_time():
    b = TokenBucket(rate=4, burst=8, now=0.0)
    assert b.refill_time(0.0) == 0.0  # available now
    b.consume(0.0, 8)
    assert b.refill_time(0.0) == pytest.approx(0.25)
    assert b.refill_time(0.0, 8) == pytest.approx(2.0)
    assert b.refill_time(1.0, 8) == pytest.approx(2.0)
    assert b.consume(2.0, 8) is True


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(0.1, 1000),
    burst=st.floats(1, 1000),
    steps=st.lists(st.tuples(st.floats(0, 2), st.floats(0.1, 50)), max_size=50),
)
def test_property_never_exceeds_burst_plus_rate_times_elapsed(rate, burst, steps):
    b = TokenBucket(rate, burst, 0.0)
    now = 0.0
    taken = 0.0
    for dt, amount in steps:
        now += dt
        if b.consume(now, amount):
            taken += amount
        assert 0 <= b.available(now) <= burst
    assert taken <= burst + rate * now + 1e-6 * (burst + rate * now)


def test_log_limiter_counts_what_it_drops_per_key() -> None:
    limiter = LogLimiter(rate=1.0, burst=2.0)
    assert [limiter.admit(0.0, "a") for _ in range(5)] == [0, 0, None, None, None]
    assert limiter.admit(0.0, "b") == 0  # another key has its own budget
    assert limiter.suppressed == 3
    assert limiter.admit(1.0, "a") == 3  # the next line says how many were dropped
    assert suppressed_note(3) == " (3 similar message(s) suppressed)"
    assert suppressed_note(0) == ""


def test_log_limiter_remembers_a_bounded_number_of_keys() -> None:
    limiter = LogLimiter(rate=1.0, burst=1.0, max_keys=8)
    for i in range(1000):
        assert limiter.admit(float(i) / 1000, f"vm{i}") == 0
    assert len(limiter._keys) <= 8


def test_rate_limited_log_one_line_per_interval(caplog) -> None:
    log = logging.getLogger("test.ratelimited")
    rlog = RateLimitedLog(log, interval_s=3600.0)
    with caplog.at_level(logging.INFO, logger="test.ratelimited"):
        for i in range(5):
            rlog(logging.INFO, "k", "line %d", i)
        rlog(logging.INFO, "other", "other %s", "key")
    assert [r.getMessage() for r in caplog.records] == ["line 0", "other key"]
