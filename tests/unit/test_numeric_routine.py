"""Time-of-day routine (``routine.py``, issue #17 eighth round): what a series does at this hour is not news."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest

from analytics.numeric import kernel, routine
from analytics.numeric.bank import SeriesBank
from analytics.numeric.config import DetectorConfig
from tests.unit.numeric_support import Road, SharedRuns

pytestmark = pytest.mark.unit

T0 = 1_767_225_600.0  # a Thursday, 00:00 UTC
STEP = 300.0
DAY_ROWS = 288
OFF = dataclasses.replace(DetectorConfig(), tod_bins=0)


def _envelope(bins: int = 48) -> np.ndarray:
    E = np.zeros((1, routine.N_ROWS, 2 * bins), dtype=np.float16)
    routine.new_rows(E, np.array([0]))
    return E


class _Feed:
    """One series' envelope fed reading by reading (deviation given directly)."""

    def __init__(self) -> None:
        self.E = _envelope()
        self.day = np.zeros(1)
        self.scale = routine.scale_for(np.array([50.0]), np.array([100.0]))

    def __call__(self, t: float, dev: float, margin: float = 1.0) -> bool:
        seen, outside, self.day, self.scale = routine.routine_step(
            self.E, np.array([0]), np.array([t]), np.array([dev]), np.array([margin]), self.day, self.scale, 0.1)
        self.outside = float(outside[0])
        return bool(seen[0])


def _day(feed: _Feed, day: int, dip_at_h: float | None, depth: float) -> list[bool]:
    """A day of 5-minute deviations: noise-free 0, with an hour-long dip at ``dip_at_h``; routine flags of the dip."""
    flags = []
    for k in range(DAY_ROWS):
        t = T0 + day * 86400 + k * STEP
        h = k * STEP / 3600
        inside = dip_at_h is not None and dip_at_h <= h < dip_at_h + 1
        seen = feed(t, -depth if inside else 0.0)
        if inside:
            flags.append(seen)
    return flags


def test_a_deviation_seen_at_this_hour_on_an_earlier_day_is_routine_and_not_elsewhere() -> None:
    feed = _Feed()
    first = _day(feed, 0, 7.5, 30.0)  # Thursday: the first rush-hour jam
    assert not any(first)  # an episode never makes itself routine, not even its later readings
    assert all(_day(feed, 1, 7.5, 30.0))  # Friday, same hour: routine
    assert not any(_day(feed, 1 + 3, 13.0, 30.0))  # Monday at 13:00: never seen at that hour
    assert all(_day(feed, 5, 7.75, 28.0))  # a quarter hour later, a little shallower: the neighbouring bins hold it
    assert not any(_day(feed, 6, 7.5, 45.0))  # deeper than any earlier day by more than the margin


def test_weekends_keep_their_own_envelope() -> None:
    feed = _Feed()
    for day in range(2):  # Thursday, Friday: the rush hour jams
        _day(feed, day, 7.5, 30.0)
    assert not any(_day(feed, 2, 7.5, 30.0))  # Saturday: weekdays' routine is not the weekend's
    assert all(_day(feed, 3, 7.5, 30.0))  # Sunday: Saturday's


def test_a_routine_that_stopped_is_forgotten() -> None:
    feed = _Feed()
    _day(feed, 0, 7.5, 30.0)
    assert all(_day(feed, 1, 7.5, 30.0))
    for day in range(7, 7 * 8, 7):  # seven calm Thursdays later
        _day(feed, day, None, 0.0)
    assert not any(_day(feed, 7 * 8, 7.5, 30.0))


def test_a_deviation_beyond_the_storage_unit_rescales_it() -> None:
    feed = _Feed()
    _day(feed, 0, 7.5, 30.0)
    huge = 1e9
    assert not feed(T0 + 86400 + 12 * 3600, huge)
    assert feed.scale[0] > routine.scale_for(np.array([50.0]), np.array([100.0]))[0]
    assert np.isfinite(feed.E.astype(np.float32)[~np.isnan(feed.E.astype(np.float32))]).all()
    assert all(_day(feed, 7, 7.5, 30.0))  # next Thursday: the jam still routine in the coarser unit


def _rush_road(days: int, incident_day: float | None = None, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Speed at a bottleneck: a daily shape, a jam every weekday morning and evening, maybe one incident."""
    n = days * DAY_ROWS
    ts = T0 + STEP * np.arange(n)
    hour = (ts % 86400) / 3600
    weekday = ((np.floor(ts / 86400) + 3) % 7) < 5
    rng = np.random.default_rng(seed)
    x = 80.0 - 6.0 * np.sin(2 * np.pi * hour / 24) + rng.normal(0, 1.5, n)
    jam = weekday & (((hour >= 7.5) & (hour < 8.5)) | ((hour >= 17.5) & (hour < 18.5)))
    x[jam] *= 0.45
    if incident_day is not None:
        k0 = int(incident_day * DAY_ROWS)
        x[k0: k0 + 12] *= 0.45
    return ts, x


INCIDENT = 9.5  # Saturday 12:00 (day 9 after a Thursday)


def _flat() -> Road:
    """A series without a time of day: noise around 50, a 5-hour rise on day 5."""
    rng = np.random.default_rng(2)
    n = 8 * DAY_ROWS
    ts = T0 + STEP * np.arange(n)
    x = 50.0 + rng.normal(0, 1.0, n)
    x[5 * DAY_ROWS: 5 * DAY_ROWS + 60] += 6.0
    return Road(ts, x, (0.0, 130.0))


DEFAULT = DetectorConfig()
# each road runs once per configuration, both roads side by side in one bank
RUNS = SharedRuns({"rush": lambda: Road(*_rush_road(12, INCIDENT), (0.0, 130.0)), "flat": _flat},
                  {DEFAULT: ("rush", "flat"), OFF: ("rush", "flat")})


def _findings(cfg: DetectorConfig, road: str) -> list[int]:
    return RUNS.run(cfg, road).fired_at()


def test_a_road_stops_raising_its_rush_hours_and_still_raises_an_incident_at_noon() -> None:
    n = len(RUNS.road("rush").ts)
    k0 = int(INCIDENT * DAY_ROWS)
    on, off = _findings(DEFAULT, "rush"), _findings(OFF, "rush")
    rush = [k for k in range(3 * DAY_ROWS, n) if not k0 <= k < k0 + 24]
    assert len([k for k in off if k in rush]) > len([k for k in on if k in rush])
    assert [k for k in on if k0 <= k < k0 + 24]  # the incident is raised


def test_a_series_without_a_time_of_day_is_judged_as_before() -> None:
    assert _findings(DEFAULT, "flat") == _findings(OFF, "flat")


def test_a_state_saved_before_the_envelopes_restores_and_starts_them() -> None:
    cfg = DetectorConfig()
    bank = SeriesBank(cfg, capacity=1)
    rows = bank.add(1)
    ts, x = _rush_road(3)
    for k in range(400):
        bank.update(rows, ts[k:k + 1], x[k:k + 1])
    buf = io.BytesIO()
    meta = json.dumps({"version": 3, "config": cfg.as_dict()})
    names = ("F", "D", "W", "R", "Hb", "Q", "S", "Ew", "Ec", "Ep", "Ek", "Aa", "Awn", "Aar", "Ac", "Au")
    arrays = {name: getattr(bank, name)[:1] for name in names}
    arrays["F"] = arrays["F"][:, : kernel.TOD_SCALE]  # as saved before the column (and the En array) existed
    arrays["F"][:, kernel.TOD_DAY] = 0.0
    np.savez_compressed(buf, meta=np.array(meta), **arrays)
    back = SeriesBank.from_state(buf.getvalue(), cfg)
    assert back.F[0, kernel.TOD_SCALE] == 0.0
    back.update(rows, ts[400:401], x[400:401])
    assert back.F[0, kernel.TOD_SCALE] > 0 and back.F[0, kernel.TOD_DAY] > 0


def test_state_round_trip_keeps_the_envelopes() -> None:
    bank = SeriesBank(DetectorConfig(), capacity=1)
    rows = bank.add(1)
    ts, x = _rush_road(3)
    for k in range(len(ts)):
        bank.update(rows, ts[k:k + 1], x[k:k + 1])
    back = SeriesBank.from_state(bank.to_state(), DetectorConfig())
    assert np.array_equal(back.En[:1], bank.En[:1], equal_nan=True)


@pytest.mark.parametrize(("mode", "opened_by", "scores"), [(2, 1, False), (3, 1, True), (3, 2, False)])
def test_art_mode_3_scores_in_a_level_shifts_hold_only(monkeypatch: pytest.MonkeyPatch, mode: int,
                                                         opened_by: int, scores: bool) -> None:
    monkeypatch.setattr(kernel, "art_step", lambda *a, **k: np.full(len(a[5]), 0.9))  # an ART anomaly
    cfg = dataclasses.replace(DetectorConfig(), art_mode=mode, art_re=False, tod_bins=0)
    bank = SeriesBank(cfg, capacity=1)
    rows = bank.add(1)
    rng = np.random.default_rng(3)
    ts = T0 + STEP * np.arange(51)
    x = 50.0 + rng.normal(0, 1.0, 51)
    for k in range(50):
        bank.update(rows, ts[k:k + 1], x[k:k + 1])
    bank.F[0, kernel.HOLD] = bank.F[0, kernel.N] + 100  # a finding holds: a level shift's (1) or another (2)
    bank.F[0, kernel.HKIND] = opened_by
    res = bank.update(rows, ts[50:51], x[50:51])
    assert bool(res.score[0] == pytest.approx(0.9)) == scores
