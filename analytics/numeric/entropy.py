"""Relative-entropy windows (after Wang et al. 2011, NAB's ``relativeEntropy``), vectorised and bounded.

The last ``W`` readings of a series are quantised into a few bins over its declared range (or, when
none is declared, the range it has covered so far) and their histogram is compared with a small set of
histograms seen before (the hypotheses). A window that no hypothesis explains (``2 W KL`` above the
chi-squared 99 % point) becomes a new hypothesis and is novel; one that agrees with a hypothesis adds
to its count. A full set forgets its least-used hypothesis. Fixed memory per series, strictly causal.
"""

from __future__ import annotations

import numpy as np

# chi-squared inverse survival function at 0.01 for 1..15 degrees of freedom (scipy.stats.chi2.isf)
_CHI2_99 = (6.635, 9.210, 11.345, 13.277, 15.086, 16.812, 18.475, 20.090, 21.666, 23.209, 24.725, 26.217,
            27.688, 29.141, 30.578)


def threshold(bins: int) -> float:
    """The agreement threshold on ``2 W KL`` for ``bins`` bins (chi-squared, ``bins - 1`` dof, 99 %)."""
    return _CHI2_99[max(1, min(bins - 1, len(_CHI2_99))) - 1]


def entropy_step(E: np.ndarray, C: np.ndarray, P: np.ndarray, K: np.ndarray, rows: np.ndarray, n: np.ndarray,
                 x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Novelty (0 or 1, 0 until a window is full) of each reading; learns it.

    Args:
        E: uint8 ring of recent bin indices per series (width = the window).
        C: float32 bin counts of the current window per series.
        P: float32 hypotheses per series, shape (series, slots, bins); K: float32 their counts (0 = empty).
        rows: series rows (distinct); n: readings seen before this one; x: the readings.
        lo, hi: the range the bins divide (readings outside are put in the edge bins).
    """
    w = E.shape[1]
    nb = C.shape[1]
    ar = np.arange(len(rows))
    span = hi - lo
    ok = span > 0
    b = np.clip(np.floor((x - lo) / np.where(ok, span, 1.0) * nb), 0, nb - 1).astype(np.intp)
    pos = (n % w).astype(np.intp)
    c = C[rows]
    full_before = n >= w
    old = E[rows, pos].astype(np.intp)
    c[ar[full_before], old[full_before]] -= 1.0
    c[ar, b] += 1.0
    C[rows] = c
    E[rows, pos] = b
    judge = (n + 1 >= w) & ok
    out = np.zeros(len(rows))
    if not judge.any():
        return out
    jr = rows[judge]
    ph = c[judge] / w  # (m, nb)
    cnt = K[jr]  # (m, slots)
    used = cnt > 0
    # only the hypotheses in use are compared (an empty slot's statistic is infinite whatever its terms): the
    # same elementwise terms and the same sum over the bins, per pair of window and hypothesis
    wi, si = np.nonzero(used)
    pu = ph[wi]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pu > 0, pu * np.log(pu / np.maximum(P[jr[wi], si], 1e-12)), 0.0)
    su = 2.0 * w * terms.sum(axis=1)
    stat = np.full(cnt.shape, np.inf, dtype=su.dtype)
    stat[wi, si] = su
    best = np.argmin(stat, axis=1)
    mr = np.arange(len(jr))
    first = ~used.any(axis=1)  # the first window is the first hypothesis, not a novelty
    agree = stat[mr, best] < threshold(nb)
    cnt[mr[agree], best[agree]] += 1.0
    new = ~agree
    if new.any():
        slot = np.argmin(cnt[new], axis=1)  # an empty slot (count 0) or the least-used hypothesis
        P[jr[new], slot] = ph[new]
        cnt[mr[new], slot] = 1.0
    K[jr] = cnt
    out[judge] = (new & ~first).astype(np.float64)
    return out
