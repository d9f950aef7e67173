"""Calm refire (issue #17 tenth round, on since the thirteenth): after a long calm spell, the next collapse of a road
with a time of day is a new incident."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from analytics.numeric.config import DetectorConfig
from tests.unit.numeric_support import Road, SharedRuns

pytestmark = pytest.mark.unit

T0 = 1_767_225_600.0  # a Thursday, 00:00 UTC
STEP = 300.0
DAY_ROWS = 288
OFF = dataclasses.replace(DetectorConfig(), calm_refire=0)
ON = DetectorConfig()
ANY_SERIES = dataclasses.replace(ON, calm_daily=False)


def _flat_road(days: int, incidents: list[tuple[float, int]], seed: int = 3,
               daily: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Speed around 55 km/h with a time of day (``daily`` km/h up by day, down by night; 0: none) and noise;
    (day, readings) collapses."""
    n = days * DAY_ROWS
    ts = T0 + STEP * np.arange(n)
    x = 55.0 + daily * np.sin(2 * np.pi * np.arange(n) / DAY_ROWS) + np.random.default_rng(seed).normal(0, 2.5, n)
    for day, length in incidents:
        k0 = int(day * DAY_ROWS)
        x[k0: k0 + length] *= 0.15
    return ts, x


FIRST, SECOND = 3.0, 3.6  # 17 hours apart: inside the first finding's hold (400 readings)


def _declared(ts: np.ndarray, x: np.ndarray) -> Road:
    return Road(ts, x, (float(x.min()), float(x.max())))  # as ``ioc detect`` declares a file's range


def _small_dip() -> Road:
    """One collapse, then a dip of a fifth of the range after a calm spell."""
    ts, x = _flat_road(5, [(FIRST, 12)])
    k0 = int(SECOND * DAY_ROWS)
    x[k0: k0 + 12] = 55.0 - 0.2 * (x.max() - x.min())
    return _declared(ts, x)


# each road runs once per configuration, all of a configuration's roads side by side in one bank
RUNS = SharedRuns(
    {"two": lambda: _declared(*_flat_road(6, [(FIRST, 12), (SECOND, 12)])),
     # after the first collapse the road keeps collapsing every 2 hours
     "disturbed": lambda: _declared(*_flat_road(5, [(3.0 + k / 12, 6) for k in range(12)])),
     "small": _small_dip,
     # the same two collapses on a road without a time of day: no daily model in use
     "no time of day": lambda: _declared(*_flat_road(6, [(FIRST, 12), (SECOND, 12)], daily=0.0))},
    {OFF: ("two",), ON: ("two", "disturbed", "small", "no time of day"), ANY_SERIES: ("no time of day",)})


def _fired(cfg: DetectorConfig, road: str) -> list[int]:
    return RUNS.run(cfg, road).fired_at()


def _raised(fired: list[int], day: float) -> bool:
    k0 = int(day * DAY_ROWS)
    return any(k0 <= k < k0 + 24 for k in fired)


def test_the_next_collapse_after_a_calm_spell_breaks_through_the_hold() -> None:
    off = _fired(OFF, "two")
    assert _raised(off, FIRST) and not _raised(off, SECOND)
    on = _fired(ON, "two")
    assert _raised(on, FIRST) and _raised(on, SECOND)


def test_a_disturbed_spell_is_one_episode() -> None:
    # after the first collapse the road keeps collapsing every 2 hours: never calm for 6 hours, one finding
    on = [k for k in _fired(ON, "disturbed") if 3 * DAY_ROWS <= k < 4 * DAY_ROWS]
    assert len(on) == 1


def test_calm_refire_needs_a_large_deviation() -> None:
    # a dip of a fifth of the range after a calm spell stays inside the hold (the range test: 0.25)
    assert not _raised(_fired(ON, "small"), SECOND)


def test_only_a_series_with_a_time_of_day_refires() -> None:
    # bursts after calm spells are the nature of many series without one (a server's CPU, a hashtag's volume)
    assert _raised(_fired(ON, "no time of day"), FIRST) and not _raised(_fired(ON, "no time of day"), SECOND)
    assert _raised(_fired(ANY_SERIES, "no time of day"), SECOND)
