"""Adaptive-resonance windows (``analytics/numeric/art.py``): novelty, quiet on routine, causality, state."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from analytics.numeric import art
from analytics.numeric.bank import SeriesBank
from analytics.numeric.batch import score_series
from analytics.numeric.config import DetectorConfig

pytestmark = pytest.mark.unit

STEP, TREND, SLOTS = 4, 72, 24


def _run(values: np.ndarray, lo: float, hi: float, slots: int = SLOTS, dtype: type = np.float32,
         state: list[np.ndarray] | None = None, **kw: object) -> np.ndarray:
    """ART scores of one series, reading by reading (``state``: filled with the arrays, for inspection)."""
    A = np.zeros((1, art.N_SCALARS))
    Wn = np.zeros((1, art.WIN), np.float32)
    Ar = np.zeros((1, TREND + 1), np.float32)
    C = np.zeros((1, slots, art.COMP), dtype)
    U = np.zeros((1, slots), np.float32)
    rows = np.array([0])
    out = np.zeros(len(values))
    for k, v in enumerate(values):
        out[k] = art.art_step(A, Wn, Ar, C, U, rows, np.array([v]), np.array([lo]), np.array([hi]), STEP, TREND,
                              **kw)[0]  # type: ignore[arg-type]
    if state is not None:
        state.extend([A, Wn, Ar, C, U])
    return out


def _daily(days: int, per_day: int = 96, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(days * per_day)
    return 50 + 30 * np.sin(2 * np.pi * t / per_day) + rng.normal(0, 1.0, len(t))


def test_haar_is_orthonormal() -> None:
    assert np.allclose(art.HAAR @ art.HAAR.T, np.eye(art.WIN))


def test_novel_window_scores_after_probation_only() -> None:
    x = _daily(8)
    x[600:640] = 2.0  # a jam: speed far below anything in its daily cycle
    s = _run(x, 0.0, 100.0)
    probation = (TREND + art.WIN - 1) * STEP
    assert not s[:probation].any()  # nothing judged before the vigilances are set
    assert s[600:660].max() > 0.5
    assert ((s > 0) & (s < 1.0 + 1e-9)).sum() == (s > 0).sum()  # scores are 0..1


def test_routine_cycle_rarely_scores() -> None:
    s = _run(_daily(8), 0.0, 100.0)
    assert (s > 0.5).sum() <= 3  # the same day over again is known


def test_causal() -> None:
    x = _daily(6)
    full = _run(x, 0.0, 100.0)
    x2 = x.copy()
    x2[400:] = 0.0
    assert np.array_equal(full[:400], _run(x2, 0.0, 100.0)[:400])


def test_bank_ensemble_state_and_memory() -> None:
    cfg = dataclasses.replace(DetectorConfig(), art_w=1.0)
    x = _daily(5)
    ts = 1_767_225_600.0 + 900.0 * np.arange(len(x))
    scores, _ = score_series([ts], [x], [(0.0, 100.0)], cfg)
    assert np.isfinite(scores).all()
    bank = SeriesBank(cfg, capacity=1)
    rows = bank.add(1)
    bank.declare(rows, 0.0, 100.0)
    for k in range(300):
        bank.update(rows, ts[k : k + 1], x[k : k + 1])
    assert bank.nbytes_per_series() <= 8192
    again = SeriesBank.from_state(bank.to_state(), cfg)
    rep = np.repeat(rows, 100)  # one series, 100 readings in order
    a = bank.update(rep, ts[300:400], x[300:400])
    b = again.update(rep, ts[300:400], x[300:400])
    assert np.array_equal(a.score, b.score)
    # a state saved without the ART arrays (detector off) restores with them empty
    off = SeriesBank(dataclasses.replace(DetectorConfig(), art_w=0.0, art_re=False), capacity=1)
    off.add(1)
    restored = SeriesBank.from_state(off.to_state(), cfg)
    assert restored.Ac.shape == (1, cfg.art_slots, art.COMP) and not restored.Ac.any()


def test_haar_odd_is_the_detail_sign_flip() -> None:
    assert np.allclose(art.HAAR_ODD @ art.HAAR_ODD.T, np.eye(art.WIN))
    assert np.allclose(art.HAAR_ODD[0], art.HAAR[0]) and np.allclose(art.HAAR_ODD[1:], -art.HAAR[1:])


def test_grid_keeps_the_median_on_the_levels() -> None:
    rng = np.random.default_rng(5)
    x = np.abs(rng.normal(0.0, 0.3, 1200))  # a series sitting at the bottom of its range
    st: list[np.ndarray] = []
    _run(x, 0.0, 100.0, state=st, grid=True)
    med, wn = st[0][0, art.MED], st[1][0]
    assert 0.0 <= med <= 1.0 and med * art.LEVELS == round(med * art.LEVELS)
    assert (wn >= 0).all() and np.allclose(wn * art.LEVELS, np.round(wn * art.LEVELS))


@pytest.mark.parametrize("merge", [1, 2])
def test_uint8_categories_and_merge(merge: int) -> None:
    x = _daily(8)
    x[600:640] = 2.0
    st: list[np.ndarray] = []
    s = _run(x, 0.0, 100.0, slots=96, dtype=np.uint8, state=st, merge=merge, grid=True)
    C = st[3]
    assert C.dtype == np.uint8 and C.max() <= art.QCAT  # levels of 1/QCAT, no wrap-around
    assert s[600:660].max() > 0.5 and ((s >= 0) & (s <= 1.0)).all()
    assert (s[:600] > 0.5).sum() <= 3  # the routine cycle stays known


def test_merge_keeps_what_it_learned() -> None:
    # few slots, soon full: from then on a merged memory only generalises (fuzzy-ART learning lowers w),
    # while replacing the least recently used slot writes windows it never covered
    x = _daily(8, seed=11)
    x[500:520] = 95.0
    for merge, only_shrinks in ((1, True), (0, False)):
        A = np.zeros((1, art.N_SCALARS))
        Wn = np.zeros((1, art.WIN), np.float32)
        Ar = np.zeros((1, TREND + 1), np.float32)
        C = np.zeros((1, 4, art.COMP), np.float32)
        U = np.zeros((1, 4), np.float32)
        shrank = True
        for k, v in enumerate(x):
            before = C.copy()
            art.art_step(A, Wn, Ar, C, U, np.array([0]), np.array([v]), np.array([0.0]), np.array([100.0]), STEP,
                         TREND, merge=merge)
            if (before.sum(axis=2) > 0).all() and k > 0:
                shrank &= bool((before + 1e-7 >= C).all())
        assert (U > 0).all()
        assert shrank is only_shrinks
