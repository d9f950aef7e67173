"""Context novelty (after the idea of contextOSE): is this short sequence of coarse levels new?

Each reading is quantised into ``levels`` symbols over the series' running all-time range; for
every order k the latest k symbols (the prefix) and the latest k + 1 (prefix plus this reading)
are looked up in a per-series hashed bit set. The novelty is the share of known prefixes whose
continuation by this reading was never seen before. Fixed memory (``bits`` per series), fully
vectorised, strictly causal (looked up before it is learned).
"""

from __future__ import annotations

import numpy as np

_MUL = np.uint64(0x9E3779B97F4A7C15)
_MIX = np.uint64(0xBF58476D1CE4E5B9)


def _mix(h: np.ndarray, nbits: int) -> np.ndarray:
    """Bit index in a table of ``nbits`` bits of a sequence's running hash."""
    h = h ^ (h >> np.uint64(31))
    h = h * _MIX
    h ^= h >> np.uint64(29)
    return (h % np.uint64(nbits)).astype(np.intp)


def novelty(Q: np.ndarray, S: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: np.ndarray,
            x: np.ndarray, rows: np.ndarray, levels: int) -> np.ndarray:
    """Novelty 0..1 of reading ``x`` per row; updates the bit sets ``Q``, symbols ``S`` and range in place.

    Args:
        Q: uint8 bit sets, one row per series.
        S: int8 recent symbols per series (latest last); its width is the largest order + 1.
        lo, hi: running minimum and maximum per reading (already including ``x``).
        n: readings seen before this one, per reading.
        x: the readings; rows: their series rows (distinct).
        levels: symbols of the quantisation.
    """
    nbits = Q.shape[1] * 8
    width = S.shape[1]
    span = np.where(hi > lo, hi - lo, 1.0)
    sym = np.clip(np.floor((x - lo) / span * (levels - 1)), 0, levels - 1).astype(np.int8)
    hist = S[rows]
    hist[:, :-1] = hist[:, 1:]
    hist[:, -1] = sym
    S[rows] = hist
    known = np.zeros(len(rows))
    new = np.zeros(len(rows))
    code = hist.astype(np.uint64) + np.uint64(1)
    h_pre = np.full(len(rows), np.uint64(0x51ED27), dtype=np.uint64)  # prefix: k symbols before x
    h_full = code[:, -1] ^ np.uint64(0xA5A5A5)  # the same k symbols, then x
    for k in range(1, width):
        ok = n >= k
        sel = rows[ok]
        h_pre = (h_pre * _MUL) ^ code[:, width - 1 - k]
        h_full = (h_full * _MUL) ^ code[:, width - 1 - k]
        pre, full = _mix(h_pre, nbits), _mix(h_full, nbits)
        seen_pre = ((Q[rows, pre >> 3] >> (pre & 7).astype(np.uint8)) & 1).astype(bool) & ok
        seen_full = ((Q[rows, full >> 3] >> (full & 7).astype(np.uint8)) & 1).astype(bool)
        known += seen_pre
        new += seen_pre & ~seen_full
        for b in (pre[ok], full[ok]):
            Q[sel, b >> 3] |= np.uint8(1) << (b & 7).astype(np.uint8)
    return np.where(known > 0, new / np.maximum(known, 1.0), 0.0)
