"""Adaptive-resonance windows (after the idea of ARTime, M. Hampton 2021), vectorised and bounded.

Every ``step`` readings of a series are reduced to one value (the block's extreme when it stands out
from the block mean, else the mean), normalised by the declared (else covered) range, quantised and
pulled to the running median when close to it. The last ``WIN`` such values and a Haar transform of
their shape are one feature vector (complement-coded), matched against a bounded set of fuzzy-ART
categories by ``(|min(x, w)| / |w|)^3 * energy^2`` (energy: the match of the latest value alone).
A window no category resonates with (best match below the lower vigilance) becomes a new category
and, outside the masking after recent new categories, an anomaly whose score grows with how far
below both vigilances it lies. The vigilances follow the series: the upper one its mean match, the
lower one the smallest recent matches. Fixed memory per series, strictly causal (matched before learned).
Options of ``art_step`` (off by default): categories as uint8 (four times as many in the same bytes), a full
memory that merges windows into their best category instead of forgetting one (ARTime never forgets: its
memory is unbounded), the running median kept on the level grid, ARTime's sign of the Haar details.
"""

from __future__ import annotations

import numpy as np

WIN = 8
DIM = 2 * WIN  # Haar shape (8) + values (8)
COMP = 2 * DIM  # complement coding
LEVELS = 80
CHOMP = 0.075
MASK = 12  # ds steps masked after an anomaly (1.5 windows)
RHO0 = 0.9  # vigilance during probation (0.8 and 0.95 tried: 0.9 scored better alone, on NAB and traffic)

# Columns of the scalar state (float64, one row per series).
(BMIN, BMAX, BSUM, BCNT, DSMA, MED, DSI, AMEAN, RLB, RUB, LASTI, LASTSIM, MASKCAT, NONEW, LASTRHO, ASUM, ACNT,
 ALAST) = range(18)
N_SCALARS = 18


def _haar() -> np.ndarray:
    """Orthonormal full-depth Haar transform of length ``WIN`` as a matrix (rows: coefficients)."""
    h = np.eye(WIN)
    out: list[np.ndarray] = []
    cur = h
    while cur.shape[0] > 1:
        avg = (cur[0::2] + cur[1::2]) / np.sqrt(2.0)
        det = (cur[0::2] - cur[1::2]) / np.sqrt(2.0)
        out = [det, *out]
        cur = avg
    return np.vstack([cur, *out])


HAAR = _haar()
#: The same with the detail coefficients negated (odd minus even, the convention of Julia's Wavelets.jl that
#: ARTime uses): the shape features are min-max scaled after the transform, so the sign changes them.
HAAR_ODD = HAAR * np.r_[1.0, -np.ones(WIN - 1)][:, None]
QCAT = 240  # uint8 categories: levels of 1/240 (a multiple of LEVELS, so block values are exact)


def art_step(A: np.ndarray, Wn: np.ndarray, Ar: np.ndarray, C: np.ndarray, U: np.ndarray, rows: np.ndarray,
             x: np.ndarray, lo: np.ndarray, hi: np.ndarray, step: int, trend: int,
             haar_odd: bool = False, grid: bool = False, merge: int = 0) -> np.ndarray:
    """Anomaly score 0..1 of each reading (nonzero only where a block closes on a novel window); learns it.

    Args:
        A: float64 scalar state (series, ``N_SCALARS``); Wn: float32 ring of the last ``WIN`` block values.
        Ar: float32 ring of recent best matches (width ``trend + 1``).
        C: categories (series, slots, ``COMP``): float32, or uint8 in levels of 1/``QCAT`` (rounded down, so a
            category still covers what it learned: four times the categories in the same bytes).
        U: float32 their last use (0 = empty).
        rows: series rows (distinct); x: the readings; lo, hi: the range values are normalised by.
        step: readings per block; trend: blocks of probation (and of the vigilance's memory).
        haar_odd: shape features with ``HAAR_ODD`` (ARTime's sign convention) instead of ``HAAR``.
        grid: the running median kept on the level grid within 0..1 (as ARTime's integer levels).
        merge: 1: a window no category resonates with, when every slot is taken, is learned by the best-matching
            category (``w <- min(x, w)``) instead of replacing the least recently used one; 2: only a window
            above the lower vigilance (not novel) is, a novel one still replaces the least recently used.
    """
    a = A[rows]
    first = a[:, BCNT] == 0
    a[:, BMIN] = np.where(first, x, np.minimum(a[:, BMIN], x))
    a[:, BMAX] = np.where(first, x, np.maximum(a[:, BMAX], x))
    a[:, BSUM] = np.where(first, x, a[:, BSUM] + x)
    a[:, BCNT] += 1.0
    out = np.zeros(len(rows))
    close = a[:, BCNT] >= step
    if close.any():
        out[close] = _block(a, Wn, Ar, C, U, rows, close, lo, hi, trend, haar_odd, grid, merge)
        a[close, BCNT] = 0.0
    A[rows] = a
    return out


def _block(a: np.ndarray, Wn: np.ndarray, Ar: np.ndarray, C: np.ndarray, U: np.ndarray, rows_all: np.ndarray,
           close: np.ndarray, lo_all: np.ndarray, hi_all: np.ndarray, trend: int, haar_odd: bool,
           grid: bool, merge: int) -> np.ndarray:
    """One block value per closing series: features, match, learn, score (``a`` rows updated in place)."""
    s = a[close]
    rows = rows_all[close]
    lo, hi = lo_all[close], hi_all[close]
    mean = s[:, BSUM] / s[:, BCNT]
    dsi = s[:, DSI] + 1.0
    s[:, DSMA] = np.where(dsi == 1, mean, (s[:, DSMA] + mean) / 2.0)
    # the block's extreme on the side farther from the moving average, unless it hardly differs from the mean
    ds = np.where(np.abs(s[:, BMAX] - s[:, DSMA]) < np.abs(s[:, BMIN] - s[:, DSMA]), s[:, BMIN], s[:, BMAX])
    ds = np.where(np.abs(ds - mean) < 0.1 * np.abs(mean), mean, ds)
    span = hi - lo
    ds = np.clip((ds - lo) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    ds = np.round(ds * LEVELS) / LEVELS
    # a running median moving one level per block; values close to it are taken as it (small noise)
    med = np.where(dsi == 1, ds, s[:, MED])
    med = med + np.sign(ds - med) / LEVELS
    if grid:  # kept on the level grid: float drift would let it step off 0 (below the range) and jitter there
        med = np.clip(np.round(med * LEVELS), 0, LEVELS) / LEVELS
    s[:, MED] = med
    ds = np.where(np.abs(ds - med) < CHOMP, med, ds)
    w = Wn[rows]
    w[:, :-1] = w[:, 1:]
    w[:, -1] = ds
    Wn[rows] = w
    s[:, DSI] = dsi
    score = np.zeros(len(rows))
    ready = dsi >= WIN
    if ready.any():
        score[ready] = _match(s, w, Ar, C, U, rows, ready, trend, haar_odd, merge)
    a[close] = s
    return score


def _features(w: np.ndarray, haar_odd: bool = False) -> np.ndarray:
    """Complement-coded features: the Haar transform of the window's shape (scaled 0..1), then its values."""
    dw = w - w.min(axis=1, keepdims=True)
    mx = dw.max(axis=1, keepdims=True)
    dw = np.where(mx > 0, dw / np.where(mx > 0, mx, 1.0), dw)
    fw = dw @ (HAAR_ODD if haar_odd else HAAR).T
    fw = fw - fw.min(axis=1, keepdims=True)
    fx = fw.max(axis=1, keepdims=True)
    fw = np.where(fx > 0, fw / np.where(fx > 0, fx, 1.0), fw)
    f = np.concatenate([fw, w], axis=1)
    return np.concatenate([f, 1.0 - f], axis=1).astype(np.float32)


def _pair_sum(a: np.ndarray) -> np.ndarray:
    """``a[:, :, (DIM - 1, COMP - 1)].sum(axis=2)`` without the copy: the reduction's own order, from 0."""
    return (0.0 + a[:, :, DIM - 1]) + a[:, :, COMP - 1]


def _match(s_all: np.ndarray, w: np.ndarray, Ar: np.ndarray, C: np.ndarray, U: np.ndarray, rows_all: np.ndarray,
           ready: np.ndarray, trend: int, haar_odd: bool = False, merge: int = 0) -> np.ndarray:
    """Fuzzy-ART match of the window, learning, vigilance adaptation and the anomaly score."""
    s = s_all[ready]
    rows = rows_all[ready]
    x = _features(w[ready], haar_odd)
    q = C.dtype == np.uint8
    if q:  # stored rounded down: a category stays within every window it learned (w <= x, as min(x, w) keeps it)
        x = np.floor(np.clip(x, 0.0, 1.0) * QCAT + 1e-3).astype(np.float32) / QCAT
    cat = C[rows].astype(np.float32) / QCAT if q else C[rows]  # (m, K, COMP)
    use = U[rows]  # (m, K)
    m = len(rows)
    ar = np.arange(m)
    dsi = s[:, DSI]
    k = dsi - WIN + 1.0  # windows matched so far, this one included
    empty = ~(use > 0).any(axis=1)
    em = np.minimum(x[:, None, :], cat)
    nw = np.maximum(cat.sum(axis=2), 1e-3)
    fs = em.sum(axis=2) / nw
    # the latest value and its complement, summed as a reduction over the two does: 0 + first + second
    es = (_pair_sum(em) / np.maximum(_pair_sum(cat), 1e-9))
    match = np.where(use > 0, fs ** 3 * es ** 2, -1.0)
    best = np.argmax(match, axis=1)
    sim = np.where(empty, 1.0, match[ar, best])
    energy = np.where(empty, 1.0, es[ar, best])
    probation = k <= trend
    rlb = np.where(probation, RHO0, s[:, RLB])
    rub = np.where(probation, RHO0, s[:, RUB])
    # learn: every category above the upper vigilance shrinks to include the window (fast commit)
    learn = (match >= rub[:, None]) & (use > 0)
    if q:
        cat = np.where(learn[:, :, None], em, cat)
    else:  # float categories are written in place, only those that change (learned, merged or committed)
        li, lk = np.nonzero(learn)
        C[rows[li], lk] = em[li, lk]
    use = np.where(learn, dsi[:, None], use)
    # no category resonates: the window becomes a new one (the least recently used slot when full)
    commit = ~learn.any(axis=1)
    if merge:  # when full, the best category takes the window in instead: nothing learned is forgotten
        mg = commit & (use > 0).all(axis=1)
        if merge == 2:  # ... unless the window is novel (below the lower vigilance): that one gets a slot
            mg &= sim >= rlb
        (cat if q else C)[ar[mg] if q else rows[mg], best[mg]] = em[ar[mg], best[mg]]
        use[ar[mg], best[mg]] = dsi[mg]
        commit &= ~mg
    slot = np.argmin(use, axis=1)
    cr = ar[commit]
    (cat if q else C)[cr if q else rows[commit], slot[commit]] = x[commit]
    use[cr, slot[commit]] = dsi[commit]
    if q:
        C[rows] = np.rint(cat * QCAT).astype(np.uint8)
    U[rows] = use
    mismatch = (sim < rlb) & ~empty
    # memory of recent matches: the vigilances follow them
    L = Ar.shape[1]
    Ar[rows, (dsi % L).astype(np.intp)] = sim
    s[:, AMEAN] = np.where(empty, 0.0, s[:, AMEAN] + np.maximum(1.0 / k, 1e-3) * (sim - s[:, AMEAN]))
    at_end = k == trend  # probation over: both vigilances start at the mean match
    rho0 = np.minimum(0.97, s[:, AMEAN])
    s[:, RLB] = np.where(at_end, rho0, s[:, RLB])
    s[:, RUB] = np.where(at_end, rho0, s[:, RUB])
    s[:, LASTRHO] = np.where(at_end, dsi, s[:, LASTRHO])
    live = k > trend
    # masking: after recent new categories (until MASK windows resonated) or within MASK of an anomaly
    since = dsi - s[:, LASTI]
    s[:, MASKCAT] = np.where(live & (k > trend + MASK) & (s[:, MASKCAT] > 0) & (s[:, NONEW] >= MASK), 0.0,
                             s[:, MASKCAT])
    s[:, NONEW] = np.where(mismatch, 0.0, s[:, NONEW] + 1.0)
    after = (since <= MASK) & (s[:, ACNT] > 0)
    shrink = (since < MASK) & (s[:, ACNT] > 0) & (sim < s[:, ALAST])
    s[:, ASUM] = np.where(shrink, s[:, ASUM] - s[:, ALAST] + sim, s[:, ASUM])
    s[:, ALAST] = np.where(shrink, sim, s[:, ALAST])
    masking = (s[:, MASKCAT] > 0) | after
    below_last = sim < s[:, LASTSIM] * np.where(after, 0.9, 0.7)
    anomaly = live & mismatch & (~masking | below_last)
    score = np.zeros(m)
    if anomaly.any():
        fsim = np.minimum(0.999, sim)
        ub = (rub - fsim) / (1.0 - fsim)
        lb = (rlb - fsim) / (1.0 - fsim)
        score = np.where(anomaly, np.clip(0.35 * ub + 0.65 * lb + 1.5 * (1.0 - energy), 0.0, 1.0), 0.0)
        s[:, ASUM] = np.where(anomaly, s[:, ASUM] + sim, s[:, ASUM])
        s[:, ACNT] = np.where(anomaly, s[:, ACNT] + 1.0, s[:, ACNT])
        s[:, ALAST] = np.where(anomaly, sim, s[:, ALAST])
        s[:, LASTSIM] = np.where(anomaly, sim, s[:, LASTSIM])
        s[:, LASTI] = np.where(anomaly, dsi, s[:, LASTI])
    s[:, MASKCAT] = np.where(mismatch, 1.0, s[:, MASKCAT])
    _vigilance(s, Ar, rows, live & (((dsi - s[:, LASTI]) == MASK) | ((dsi - s[:, LASTRHO]) >= trend // 2)), trend)
    s_all[ready] = s
    return score


def _vigilance(s: np.ndarray, Ar: np.ndarray, rows: np.ndarray, upd: np.ndarray, trend: int) -> None:
    """Move the vigilances towards the recent matches (every half probation, and after an anomaly)."""
    if not upd.any():
        return
    L = Ar.shape[1]
    r = rows[upd]
    su = s[upd]
    dsi = su[:, DSI]
    hist = Ar[r].astype(np.float64)  # (u, L): matches of the last L windows, by position dsi % L
    age = (dsi[:, None] - np.arange(L)[None, :]) % L  # 0 = this window
    recent = np.where(age <= trend // 2, hist, np.inf)
    min_sim = recent.min(axis=1)
    ub = np.minimum(0.97, su[:, AMEAN])
    lb = su[:, RLB]
    diff = su[:, RUB][:, None] - hist
    big = diff > 0.05
    decr = np.where(big.any(axis=1), np.where(big, np.minimum(diff, 0.37), 0.0).sum(axis=1)
                    / np.maximum(big.sum(axis=1), 1), 0.0)
    decr = np.where(su[:, DSI] - WIN + 1 > 2 * trend, decr, 0.0)
    lower = lb - np.maximum(0.01, decr) / 2.0
    hist_mean = np.where(su[:, ACNT] > 0, su[:, ASUM] / np.maximum(su[:, ACNT], 1.0), -np.inf)
    lower = np.maximum(hist_mean, lower)
    new_lb = np.where(lb <= min_sim, lb + 0.19 * (min_sim - lb), lower)
    su[:, RLB] = np.minimum(ub, new_lb)
    su[:, RUB] = ub
    su[:, LASTRHO] = dsi
    su[:, MASKCAT] = 1.0
    s[upd] = su
