"""Anomaly likelihood of the residuals (``analytics/numeric/likelihood.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.numeric import likelihood

pytestmark = pytest.mark.unit


def _run(z: np.ndarray, min_count: int = 120, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    L = np.zeros((1, likelihood.N_SCALARS)) if state is None else state
    rows = np.array([0])
    out = np.zeros(len(z))
    for k, v in enumerate(z):
        out[k] = likelihood.likelihood_step(L, rows, np.array([v]), 10.0, 2000.0, np.array([False]), min_count)[0]
    return out, L


def test_quiet_on_noise_and_every_like_episode_is_unlikely() -> None:
    z = np.random.default_rng(1).normal(0.0, 1.0, 3000)
    z[1500:1510] = 30.0  # an episode
    z[2500:2510] = 30.0  # and one just as large later: still as unlikely (no "old news")
    out, _ = _run(z)
    assert out[:1500].max() < 5.0
    assert out[1500:1520].max() >= 5.0
    assert out[2500:2520].max() >= 5.0
    assert out[1530:2500].max() < 5.0


def test_judges_only_after_its_own_readings() -> None:
    z = np.full(200, 8.0)
    out, L = _run(z[:100])
    assert not out.any()  # fewer than min_count readings of its own
    assert L[0, likelihood.COUNT] == 100


def test_causal_prefix_gives_same_scores() -> None:
    z = np.random.default_rng(2).normal(0.0, 1.0, 800)
    z[700:705] = 20.0
    full, _ = _run(z)
    part, _ = _run(z[:650])
    np.testing.assert_array_equal(full[:650], part)


def test_bank_state_without_the_member_restores_into_it() -> None:
    import dataclasses

    from analytics.numeric.bank import SeriesBank
    from analytics.numeric.config import DetectorConfig

    off = SeriesBank(DetectorConfig())
    rows = off.add(1)
    t = 1_767_225_600.0 + 300.0 * np.arange(400)
    x = np.random.default_rng(3).normal(50.0, 1.0, 400)
    for i in range(300):
        off.update(rows, t[i : i + 1], x[i : i + 1])
    assert off.Lk.shape[1] == 0  # off by default: no state
    on = SeriesBank.from_state(off.to_state(), dataclasses.replace(DetectorConfig(), lik_mode=1))
    assert on.Lk.shape == (1, likelihood.N_SCALARS) and not on.Lk.any()
    for i in range(300, 400):
        on.update(rows, t[i : i + 1], x[i : i + 1])
    assert on.Lk[0, likelihood.COUNT] == 100  # it learns afresh from the restore on
