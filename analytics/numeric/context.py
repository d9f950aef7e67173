"""Context of a reading: how far the latest few values lie from their nearest earlier subsequence.

The pattern severity of the detector bank (``kernel._severities``): a series' recent history (``Hb``, float32,
the latest value last) is searched for the subsequence closest to its latest ``dim`` values.
"""

from __future__ import annotations

import numpy as np


def context_distance(Hb: np.ndarray, rows: np.ndarray, v: np.ndarray, dim: int, judged: np.ndarray) -> np.ndarray:
    """Distance from the latest ``dim`` values to their nearest earlier subsequence; appends ``v``.

    Computed where ``judged`` (0 elsewhere: a series whose history is not full yet is not judged on it)."""
    hb = Hb[rows]
    hb[:, :-1] = hb[:, 1:]
    hb[:, -1] = v
    Hb[rows] = hb
    out = np.zeros(len(rows), dtype=hb.dtype)
    if not judged.all():
        if not judged.any():
            return out
        hb = hb[judged]
    h = hb.shape[1]
    m = h - 2 * dim + 1  # candidate windows that end before the current one starts
    # one 2-D pass per lag instead of a 3-D temporary, in place: the same sums, several times faster
    d2 = np.square(hb[:, :m] - hb[:, h - dim : h - dim + 1])
    tmp = np.empty_like(d2)
    for k in range(1, dim):
        np.subtract(hb[:, k : k + m], hb[:, h - dim + k : h - dim + k + 1], out=tmp)
        d2 += np.square(tmp, out=tmp)
    out[judged] = np.sqrt(d2.min(axis=1) / dim)
    return out
