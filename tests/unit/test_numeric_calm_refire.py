"""Calm refire (issue #17 tenth round): after a long calm spell, the next collapse is a new incident."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from analytics.numeric.bank import SeriesBank
from analytics.numeric.config import DetectorConfig

pytestmark = pytest.mark.unit

T0 = 1_767_225_600.0  # a Thursday, 00:00 UTC
STEP = 300.0
DAY_ROWS = 288
OFF = dataclasses.replace(DetectorConfig(), calm_refire=0)
ON = dataclasses.replace(DetectorConfig(), calm_refire=72, calm_level=0.5, calm_range=0.25)


def _flat_road(days: int, incidents: list[tuple[float, int]], seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Speed on a road with no time of day (no rush hour): noise around 55 km/h; (day, readings) collapses."""
    n = days * DAY_ROWS
    ts = T0 + STEP * np.arange(n)
    x = 55.0 + np.random.default_rng(seed).normal(0, 2.5, n)
    for day, length in incidents:
        k0 = int(day * DAY_ROWS)
        x[k0: k0 + length] *= 0.15
    return ts, x


def _fired(cfg: DetectorConfig, ts: np.ndarray, x: np.ndarray) -> list[int]:
    bank = SeriesBank(cfg, capacity=1)
    rows = bank.add(1)
    bank.declare(rows, float(x.min()), float(x.max()))  # as ``ioc detect`` declares a file's range
    return [k for k in range(len(ts)) if bank.update(rows, ts[k:k + 1], x[k:k + 1]).fired[0]]


def _raised(fired: list[int], day: float) -> bool:
    k0 = int(day * DAY_ROWS)
    return any(k0 <= k < k0 + 24 for k in fired)


def test_the_next_collapse_after_a_calm_spell_breaks_through_the_hold() -> None:
    first, second = 3.0, 3.6  # 17 hours apart: inside the first finding's hold (400 readings)
    ts, x = _flat_road(6, [(first, 12), (second, 12)])
    off = _fired(OFF, ts, x)
    assert _raised(off, first) and not _raised(off, second)
    on = _fired(ON, ts, x)
    assert _raised(on, first) and _raised(on, second)


def test_a_disturbed_spell_is_one_episode() -> None:
    # after the first collapse the road keeps collapsing every 2 hours: never calm for 6 hours, one finding
    bursts = [(3.0 + k / 12, 6) for k in range(12)]
    ts, x = _flat_road(5, bursts)
    on = [k for k in _fired(ON, ts, x) if 3 * DAY_ROWS <= k < 4 * DAY_ROWS]
    assert len(on) == 1


def test_calm_refire_needs_a_large_deviation() -> None:
    # a dip of a fifth of the range after a calm spell stays inside the hold (the range test: 0.25)
    ts, x = _flat_road(5, [(3.0, 12)])
    k0 = int(3.6 * DAY_ROWS)
    x[k0: k0 + 12] = 55.0 - 0.2 * (x.max() - x.min())
    assert not _raised(_fired(ON, ts, x), 3.6)
