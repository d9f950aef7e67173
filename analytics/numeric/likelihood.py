"""Anomaly likelihood of the prediction residuals (after Numenta's, Ahmad et al. 2017), vectorised.

The raw anomaly of a reading is its residual in the model's own spreads, capped (``|z| / cap``). Its
short-term average (an EW mean over about ten readings) is compared with the distribution of that
average over the series' history (an EW mean and variance, a normal fit): the tail probability of the
present average under it is the likelihood. Unlike the severity records, an episode as large as an
earlier one is as unlikely as the first (the history learns it only at the slow rate). Four
float64 scalars per series, strictly causal (judged before learned). The member counts its own readings,
so a series restored from a state saved without it starts its likelihood afresh rather than judging
against an empty history.
"""

from __future__ import annotations

import math

import numpy as np

MEAN, VAR, SHORT, COUNT = range(4)
N_SCALARS = 4
SHORT_ALPHA = 0.2  # about ten readings, Numenta's averaging window
VAR_FLOOR = 1e-4  # a series predicted perfectly so far is not infinitely sure of itself


def _q(u: np.ndarray) -> np.ndarray:
    """Upper tail of the standard normal."""
    erfc = np.vectorize(math.erfc, otypes=[np.float64])
    return 0.5 * erfc(u / math.sqrt(2.0))


def likelihood_step(L: np.ndarray, rows: np.ndarray, z: np.ndarray, cap: float, tau: float,
                    gap: np.ndarray, min_count: int) -> np.ndarray:
    """``-log10`` of the tail probability of each reading's short-term residual average; learns it.

    Args:
        L: float64 state (series, ``N_SCALARS``); rows: series rows (distinct).
        z: residual of each reading in its model's spreads; cap: |z| counted as a full anomaly (1.0).
        tau: readings over which the history's distribution is averaged; gap: restart the short average;
        min_count: readings the member learns before it judges.
    """
    lk = L[rows]
    n = lk[:, COUNT]
    raw = np.minimum(np.abs(z) / cap, 1.0)
    short = np.where((n == 0) | gap, raw, lk[:, SHORT] + SHORT_ALPHA * (raw - lk[:, SHORT]))
    sd = np.sqrt(np.maximum(lk[:, VAR], VAR_FLOOR))
    u = (short - lk[:, MEAN]) / sd
    out = np.zeros(len(rows))
    hi = (u > 2.0) & (n >= min_count)  # most readings: nothing to compute (a tail above 2 %)
    if hi.any():
        out[hi] = -np.log10(np.maximum(_q(u[hi]), 1e-300))
    a = np.maximum(1.0 / (n + 1.0), 1.0 / tau)
    d = short - lk[:, MEAN]
    lk[:, MEAN] += a * d
    lk[:, VAR] = np.where(n == 0, 0.0, (1.0 - a) * (lk[:, VAR] + a * d * d))
    lk[:, SHORT] = short
    lk[:, COUNT] = n + 1.0
    L[rows] = lk
    return out
