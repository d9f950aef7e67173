"""The alert stage's retries back off: a step that keeps raising, or a store the database does not take, is not
tried again on every tick (each failed step applied and undid the whole queue: ~0.15 s of CPU per tick at 50,000
waiting signals). The retry clock is driven by hand; no timing is asserted."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ingest.records import DeviceEvent, ParsedMessage
from ioc.alerts.config import AlertsConfig
from ioc.alerts.model import Severity, Signal
from ioc.alerts.pacing import FLUSH_RETRY_MAX_S, STEP_RETRY_MAX_S, Retry
from ioc.alerts.stage import AlertStage
from ioc.geo import City
from ioc.live.hub import LiveHub

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class DownPool:
    """A database that refuses every connection."""

    def __init__(self) -> None:
        self.tries = 0

    def acquire(self, timeout: float | None = None) -> Any:
        self.tries += 1
        raise OSError("connection refused: the database is down")


def _stage(pool: Any, clock: Clock) -> AlertStage:
    city = City.load()
    stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig())
    stage.step_retry = Retry(stage.config.tick_s, STEP_RETRY_MAX_S, clock)
    stage.flush_retry = Retry(stage.config.tick_s, FLUSH_RETRY_MAX_S, clock)
    return stage


def _event(dev: str, now: datetime) -> ParsedMessage:
    return ParsedMessage([DeviceEvent(dev, "bts", now, "mains_power_lost", "major")], [])


async def test_a_step_that_keeps_raising_is_retried_after_a_growing_pause() -> None:
    clock = Clock()
    stage = _stage(None, clock)
    now = datetime.now(UTC)
    for i in range(20):
        stage.on_parsed(_event(f"dev-{i}", now))
    calls = [0]
    engine_tick = stage.engine.tick

    def broken(at: datetime) -> Any:
        calls[0] += 1
        raise ValueError("the engine cannot compare a stored silence")

    stage.engine.tick = broken  # type: ignore[method-assign]
    tried = []
    for _ in range(8):  # ticks 1 s apart on the retry clock
        before = calls[0]
        await stage._tick()
        tried.append(calls[0] > before)
        clock.now += stage.config.tick_s
    assert tried[0] and not all(tried), f"no pause between failed steps: {tried}"
    assert stage.step_retry.failures >= 2 and len(stage._signals) == 20  # every signal still waits
    clock.now += STEP_RETRY_MAX_S  # past the longest pause
    stage.engine.tick = engine_tick  # type: ignore[method-assign]
    await stage._tick()
    assert stage.step_failing is None and stage.step_retry.failures == 0 and not stage._signals


async def test_a_step_that_sets_aside_a_bad_signal_made_progress_and_does_not_pause() -> None:
    clock = Clock()
    stage = _stage(None, clock)
    now = datetime.now(UTC)
    stage.on_parsed(_event("dev-a", now))
    naive = now.replace(tzinfo=None)  # compared with the engine's aware clock: TypeError
    stage._signals.append(Signal("device_event", "door_open:x", True, naive, severity=Severity.CRITICAL))
    stage._step_safely(now)
    assert stage.step_failing is not None and stage._refused  # raised, then applied apart
    stage.on_parsed(_event("dev-b", now))
    stage._signals.append(Signal("device_event", "door_open:y", True, naive, severity=Severity.CRITICAL))
    await stage._tick()
    assert stage.step_retry.failures == 0 and stage.step_retry.due()


async def test_change_sets_the_database_does_not_take_are_retried_after_a_growing_pause() -> None:
    clock = Clock()
    pool = DownPool()
    stage = _stage(pool, clock)
    stage.on_parsed(_event("dev-a", datetime.now(UTC)))
    for _ in range(12):
        await stage._tick()
        clock.now += stage.config.tick_s
    assert stage._unsaved and stage.flush_failing_since is not None  # held, not lost
    assert 3 <= pool.tries < 12 and stage.flush_retry.failures == pool.tries
    tries = pool.tries
    for _ in range(int(FLUSH_RETRY_MAX_S) + 2):  # the pause never passes its cap
        await stage._tick()
        clock.now += stage.config.tick_s
    assert pool.tries > tries
