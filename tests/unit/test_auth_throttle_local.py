"""The per-process moving windows behind the shared login and action limits (ioc/auth/throttle.py): the same
answers as ``limits``' memory storage, and bounded under a flood of random user names."""

from __future__ import annotations

import uuid

import pytest
from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter

from ioc.auth.throttle import EVICTED, SHARED_MAX_AMOUNT, LocalWindows, Throttle, digest

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_moving_window_refused_attempts_are_not_counted() -> None:
    clock = Clock()
    limiter = MovingWindowRateLimiter(LocalWindows(clock=clock))
    item = parse("3/minute")
    answers = []
    for _ in range(5):
        answers.append(await limiter.hit(item, "login-account", "an"))
        clock.now += 10
    assert answers == [True, True, True, False, False]
    clock.now = 1_000_000.0 + 60.5  # the first hit has left the window; the refused ones never counted
    assert await limiter.hit(item, "login-account", "an")
    assert not await limiter.hit(item, "login-account", "an")
    assert await limiter.hit(item, "login-account", "binh")  # another key, its own count
    assert not await limiter.test(item, "login-account", "an")


async def test_a_flood_of_random_names_leaves_one_window_of_keys() -> None:
    """``limits``' MemoryStorage kept every key it ever saw (an empty list each): 20,001 after 20,000 names."""
    clock = Clock()
    windows = LocalWindows(clock=clock)
    limiter = MovingWindowRateLimiter(windows)
    item = parse("10/minute")
    for second in range(5):
        for _ in range(2000):
            await limiter.hit(item, "login-account", uuid.uuid4().hex)
        assert len(windows) <= 2000 * 2, (second, len(windows))  # this window and the one before, at most
        clock.now += 31
    clock.now += 61
    await limiter.hit(item, "login-account", "last")
    assert len(windows) == 1


async def test_max_keys_drops_the_least_recently_granted() -> None:
    clock = Clock()
    windows = LocalWindows(max_keys=100, clock=clock)
    limiter = MovingWindowRateLimiter(windows)
    item = parse("20/minute")
    before = EVICTED._value.get()
    await limiter.hit(item, "action", "kept")
    for i in range(150):
        await limiter.hit(item, "action", f"name-{i}")
        if i % 10 == 0:
            await limiter.hit(item, "action", "kept")  # granted again: moves to the back
    assert len(windows) == 100 and EVICTED._value.get() - before == 51
    assert (await limiter.get_window_stats(item, "action", "kept")).remaining == 20 - 16
    assert (await limiter.get_window_stats(item, "action", "name-0")).remaining == 20  # dropped: counts afresh


async def test_without_a_database_the_process_counts_alone() -> None:
    throttle = Throttle(pool_of=None)
    item = parse("2/minute")
    assert [await throttle.hit("login", item, "10.0.0.1", "an") for _ in range(3)] == [True, True, False]


async def test_limits_too_large_to_share_are_counted_per_process() -> None:
    def no_database() -> None:
        raise AssertionError("a limit above SHARED_MAX_AMOUNT asked the database")

    throttle = Throttle(pool_of=no_database)
    item = parse(f"{SHARED_MAX_AMOUNT + 1}/minute")
    assert all([await throttle.hit("action", item, "token", "fuzz") for _ in range(SHARED_MAX_AMOUNT + 1)])
    assert not await throttle.hit("action", item, "token", "fuzz")


def test_stored_keys_are_digests_of_any_text() -> None:
    assert len(digest("LIMITER/login-account/admin/10/1/minute")) == 32
    assert digest("a\x00\ud800") != digest("a")  # NUL and a lone surrogate (valid JSON) are accepted
