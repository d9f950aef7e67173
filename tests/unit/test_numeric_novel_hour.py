"""New for its time of day (issue #17 ninth round): what a road never did at this hour is not everyday news."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from analytics.numeric import routine
from analytics.numeric.config import DetectorConfig
from tests.unit.numeric_support import Road, SharedRuns

pytestmark = pytest.mark.unit

T0 = 1_767_225_600.0  # a Thursday, 00:00 UTC
STEP = 300.0
DAY_ROWS = 288
NO_NOVEL = dataclasses.replace(DetectorConfig(), tod_novel=0.0)
NO_REFIRE = dataclasses.replace(DetectorConfig(), calm_refire=0)  # the calm refire (on) catches this road too
REFIRE = dataclasses.replace(NO_REFIRE, tod_refire_gap=144)


def _road(days: int, incidents: list[float], jam_depth: float = 0.45, incident_depth: float = 0.45,
          seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Speed at a bottleneck: a daily shape, jams every weekday morning and evening, hour-long incidents."""
    n = days * DAY_ROWS
    ts = T0 + STEP * np.arange(n)
    hour = (ts % 86400) / 3600
    weekday = ((np.floor(ts / 86400) + 3) % 7) < 5
    x = 80.0 - 6.0 * np.sin(2 * np.pi * hour / 24) + np.random.default_rng(seed).normal(0, 1.5, n)
    x[weekday & (((hour >= 7.5) & (hour < 8.5)) | ((hour >= 17.5) & (hour < 18.5)))] *= jam_depth
    for day in incidents:
        k0 = int(day * DAY_ROWS)
        x[k0: k0 + 12] *= incident_depth
    return ts, x


FIRST, SECOND = 7.42, 8.0  # Thursday 10:05, Friday 00:00: within the first finding's hold (400 readings)


def _refire_road() -> Road:
    ts, x = _road(12, [FIRST, SECOND], incident_depth=0.3)
    return Road(ts, x, (float(x.min()), float(x.max())))  # as ``ioc detect`` declares a file's range


DEFAULT = DetectorConfig()
# every road is run once per configuration, all of a configuration's roads side by side in one bank
RUNS = SharedRuns(
    {"noon-8.5": lambda: Road(*_road(12, [8.5], jam_depth=0.3, incident_depth=0.5), (0.0, 130.0)),
     "noon-9.5": lambda: Road(*_road(12, [9.5], jam_depth=0.2, incident_depth=0.5), (0.0, 130.0)),
     "rush": lambda: Road(*_road(12, [], jam_depth=0.3), (0.0, 130.0)),
     "refire": _refire_road},
    {DEFAULT: ("noon-8.5", "noon-9.5", "rush", "refire"), NO_NOVEL: ("noon-8.5", "noon-9.5"), REFIRE: ("refire",),
     NO_REFIRE: ("refire",)})


def _fired(cfg: DetectorConfig, road: str) -> list[int]:
    return RUNS.run(cfg, road).fired_at()


def _raised(fired: list[int], day: float) -> bool:
    k0 = int(day * DAY_ROWS)
    return any(k0 <= k < k0 + 24 for k in fired)


def test_outside_measures_how_far_a_deviation_lies_beyond_every_earlier_day_at_this_hour() -> None:
    E = np.zeros((1, routine.N_ROWS, 96), dtype=np.float16)
    routine.new_rows(E, np.array([0]))
    day, scale = np.zeros(1), routine.scale_for(np.array([50.0]), np.array([100.0]))

    def feed(t: float, dev: float) -> tuple[bool, float]:
        nonlocal day, scale
        seen, outside, day, scale = routine.routine_step(E, np.array([0]), np.array([t]), np.array([dev]),
                                                         np.array([1.0]), day, scale, 0.1)
        return bool(seen[0]), float(outside[0])

    for k in range(DAY_ROWS):  # Thursday: deviations between -5 and +5 around noon, 0 elsewhere
        feed(T0 + k * STEP, 5.0 * np.sin(k) if 140 <= k < 150 else 0.0)
    noon = T0 + 86400 + 12 * 3600  # Friday noon: the envelope of Thursday noon
    assert feed(noon, 2.0) == (True, 0.0)
    seen, outside = feed(noon + 300, -25.0)
    assert not seen and outside == pytest.approx(25.0 - 5.0, abs=0.2)
    saturday = T0 + 2 * 86400 + 12 * 3600  # no weekend day seen yet: nothing to compare with
    assert np.isnan(feed(saturday, -25.0)[1])


@pytest.mark.parametrize(("day", "road"), [(8.5, "noon-8.5"), (9.5, "noon-9.5")])
def test_a_collapse_at_noon_is_raised_on_a_road_whose_rush_hours_jam_deeper(day: float, road: str) -> None:
    # the rush hours reach large severities every weekday, so without the time of day a collapse at noon
    # (shallower than the jams: 0.5 against 0.3 and 0.2) looks everyday to the rarity histogram and is not raised
    assert _raised(_fired(DEFAULT, road), day)
    assert not _raised(_fired(NO_NOVEL, road), day)


def test_rush_hours_still_raise_no_more_than_a_finding_or_two() -> None:
    late = [k for k in _fired(DEFAULT, "rush") if k >= 4 * DAY_ROWS]
    assert len(late) <= 1


def test_the_next_incident_hours_later_breaks_through_the_first_ones_hold_with_the_refire() -> None:
    held = _fired(NO_REFIRE, "refire")  # declared: the file's range, so a collapse is 40 % of it
    assert _raised(held, FIRST) and not _raised(held, SECOND)
    refire = _fired(REFIRE, "refire")
    assert _raised(refire, FIRST) and _raised(refire, SECOND)
    # the default's calm refire: the road was calm for 14 hours before the second incident
    default = _fired(DEFAULT, "refire")
    assert _raised(default, FIRST) and _raised(default, SECOND)
