"""First-week learning (``week_learn_days``, issue #17 fifth round): a daily series' new weekday is learned."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest

from analytics.numeric import kernel
from analytics.numeric.bank import SeriesBank
from analytics.numeric.config import DetectorConfig

pytestmark = pytest.mark.unit

T0 = 1_767_225_600.0  # a Thursday, 00:00 UTC
STEP = 300.0
DAY_ROWS = 288


def _series(shift_day: float, daily: bool, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Ten days of 5-minute data; from ``shift_day`` on, 12 hours a clear step up."""
    n = 10 * DAY_ROWS
    ts = T0 + STEP * np.arange(n)
    hour = (ts - T0) % 86400 / 3600
    rng = np.random.default_rng(seed)
    x = 50.0 + (20.0 * np.sin(2 * np.pi * hour / 24) if daily else 0.0) + rng.normal(0, 1.0, n)
    k0 = int(shift_day * DAY_ROWS)
    x[k0: k0 + 144] += 8.0
    return ts, x


def _findings(cfg: DetectorConfig, ts: np.ndarray, x: np.ndarray) -> list[tuple[int, str]]:
    bank = SeriesBank(cfg, capacity=1)
    rows = bank.add(1)
    out = []
    for k in range(len(ts)):
        res = bank.update(rows, ts[k:k + 1], x[k:k + 1])
        if res.fired[0]:
            out.append((k, kernel.TYPES[int(res.kind[0])]))
    return out


def _shifts(found: list[tuple[int, str]], lo: int, hi: int) -> list[tuple[int, str]]:
    return [(k, t) for k, t in found if lo <= k < hi and t in ("level_shift", "drift")]


ON = dataclasses.replace(DetectorConfig(), week_learn_days=7.0)


def test_off_by_default() -> None:
    assert DetectorConfig().week_learn_days == 0.0


def test_a_daily_series_learns_a_change_in_its_first_week_and_reports_it_later() -> None:
    ts, x = _series(3.4, daily=True)
    k0 = int(3.4 * DAY_ROWS)
    assert _shifts(_findings(DetectorConfig(), ts, x), k0, k0 + 200)  # the default reports it
    assert not _shifts(_findings(ON, ts, x), k0, k0 + 200)  # first week: learned, not raised
    ts, x = _series(8.4, daily=True)
    k0 = int(8.4 * DAY_ROWS)
    assert _shifts(_findings(ON, ts, x), k0, k0 + 200)  # after the first week: raised


def test_a_series_without_daily_pattern_is_judged_as_before() -> None:
    ts, x = _series(3.4, daily=False)
    found = _findings(ON, ts, x)
    k0 = int(3.4 * DAY_ROWS)
    assert [k for k, _ in found if k0 <= k < k0 + 200]
    assert found == _findings(DetectorConfig(), ts, x)


def test_a_state_saved_before_the_column_restores_it_empty() -> None:
    bank = SeriesBank(ON, capacity=1)
    rows = bank.add(1)
    ts, x = _series(3.4, daily=True)
    for k in range(400):
        bank.update(rows, ts[k:k + 1], x[k:k + 1])
    buf = io.BytesIO()
    meta = json.dumps({"version": 3, "config": ON.as_dict()})
    arrays = {name: getattr(bank, name)[:1] for name in ("F", "D", "W", "R", "Hb", "Q", "S")}
    arrays["F"] = arrays["F"][:, : kernel.SEAS]  # as saved before the column existed
    np.savez_compressed(buf, meta=np.array(meta), **arrays)
    back = SeriesBank.from_state(buf.getvalue(), ON)
    assert np.array_equal(back.F[:1, : kernel.SEAS], bank.F[:1, : kernel.SEAS])
    assert back.F[0, kernel.SEAS] == 0.0


@pytest.mark.parametrize(("mode", "opened_by", "scores"), [(2, 1, False), (3, 1, True), (3, 2, False)])
def test_art_mode_3_scores_in_a_level_shifts_hold_only(monkeypatch: pytest.MonkeyPatch, mode: int,
                                                         opened_by: int, scores: bool) -> None:
    monkeypatch.setattr(kernel, "art_step", lambda *a, **k: np.full(len(a[5]), 0.9))  # an ART anomaly
    cfg = dataclasses.replace(DetectorConfig(), art_mode=mode, art_re=False)
    bank = SeriesBank(cfg, capacity=1)
    rows = bank.add(1)
    ts, x = _series(9.0, daily=False)
    for k in range(50):
        bank.update(rows, ts[k:k + 1], x[k:k + 1])
    bank.F[0, kernel.HOLD] = bank.F[0, kernel.N] + 100  # a finding holds: a level shift's (1) or another (2)
    bank.F[0, kernel.HKIND] = opened_by
    res = bank.update(rows, ts[50:51], x[50:51])
    assert bool(res.score[0] == pytest.approx(0.9)) == scores
