"""Token buckets per (channel, target), on an injected clock (retry delays: test_backoff.py)."""

from __future__ import annotations

import pytest

from ioc.alerts.notify.ratelimit import RateLimiter

pytestmark = pytest.mark.unit

KEY = ("webhook", "http://hook")


def test_burst_then_rate() -> None:
    limiter = RateLimiter(rate_per_minute=60, burst=3)  # one token a second
    assert [limiter.acquire(KEY, 100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire(KEY, 100.0) == pytest.approx(1.0)
    assert limiter.acquire(KEY, 100.5) == pytest.approx(0.5)  # a refused take costs nothing
    assert limiter.acquire(KEY, 101.0) == 0.0
    assert limiter.acquire(KEY, 101.0) == pytest.approx(1.0)
    # Idle for long: refills to the burst, no more.
    assert [limiter.acquire(KEY, 1000.0) for _ in range(4)][-1] == pytest.approx(1.0)


def test_keys_are_independent() -> None:
    limiter = RateLimiter(rate_per_minute=1, burst=1)
    assert limiter.acquire(("email", "a@x"), 0.0) == 0.0
    assert limiter.acquire(("email", "a@x"), 0.0) == pytest.approx(60.0)
    assert limiter.acquire(("email", "b@x"), 0.0) == 0.0
    assert limiter.acquire(("webhook", "a@x"), 0.0) == 0.0


def test_idle_buckets_are_forgotten_beyond_max_keys() -> None:
    limiter = RateLimiter(rate_per_minute=60, burst=1, max_keys=10)
    for i in range(10):
        limiter.acquire(("email", f"{i}@x"), 0.0)
    limiter.acquire(("email", "new@x"), 5.0)  # all ten have refilled by then
    assert len(limiter) == 1


def test_clock_going_backwards_grants_nothing_extra() -> None:
    limiter = RateLimiter(rate_per_minute=60, burst=1)
    assert limiter.acquire(KEY, 10.0) == 0.0
    assert limiter.acquire(KEY, 5.0) > 0


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        RateLimiter(0, 1)
    with pytest.raises(ValueError):
        RateLimiter(1, 0)

