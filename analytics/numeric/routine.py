"""Time-of-day routine: how far a series strays from its slow level at this time of day on earlier days.

A road that jams every weekday rush hour, a cell whose load peaks every evening, a server busy every
night: their deviations at those hours are routine, however large. Each series keeps, per half hour of
the day and apart for weekdays and weekends, the envelope (lowest and highest deviation from the slow
level) of the earlier days; a reading inside it, within a margin, has been seen at this time of day
before. The day being collected is kept aside and folded in when the series' next day starts, so an
episode never makes itself routine. The envelope widens at once to a wilder day and contracts towards a
calmer one by a share per day, so a routine that stopped is forgotten in a few weeks.

Stored as float16 in units of a per-series scale (the declared range, else the first reading's size,
rescaled when a deviation outgrows it): 768 bytes per series at 48 bins. Strictly causal; vectorised.
"""

from __future__ import annotations

import numpy as np

ENV_LO, ENV_HI, DAY_LO, DAY_HI = range(4)
N_ROWS = 4
DAY = 86400.0
_ROOM = 30000.0  # float16 holds up to 65,504: rescale before a stored value could pass this


def new_rows(E: np.ndarray, rows: np.ndarray) -> None:
    """Empty envelopes (NaN: nothing seen in that bin yet)."""
    E[rows] = np.nan


def scale_for(x: np.ndarray, span: np.ndarray) -> np.ndarray:
    """The unit deviations are stored in: a thousandth of the declared range, else of the first reading's size."""
    return np.where(span > 0, span, np.maximum(np.abs(x), 1e-9)) / 1000.0


def _store(v: np.ndarray) -> np.ndarray:
    return np.clip(v, -60000.0, 60000.0).astype(np.float16)


def _weekend(day: np.ndarray) -> np.ndarray:
    """Saturday and Sunday (UTC days; 1970-01-01 was a Thursday)."""
    return ((day + 3.0) % 7.0) >= 5.0


def routine_step(E: np.ndarray, rows: np.ndarray, t: np.ndarray, dev: np.ndarray, margin: np.ndarray,
                 day_now: np.ndarray, scale: np.ndarray,
                 shrink: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Whether each reading's deviation ``dev`` is routine for its time of day; learns it.

    Args:
        E: float16 envelopes (series, ``N_ROWS``, 2 * bins): weekday bins, then weekend bins.
        rows: series rows (distinct); t: reading times (s since the epoch); dev: deviation from the slow level.
        margin: how far outside the envelope still counts as inside (e.g. one spread), in series units.
        day_now: the UTC day (+1; 0 = none yet) each series is collecting; scale: each series' storage unit.
        shrink: share of the gap to a calmer day's extremes the envelope closes per day.

    Returns:
        (routine, outside, day, scale): the mask; how far the deviation lies outside the envelope (series units,
        0 inside, NaN where no earlier day was seen at this time of day); each series' collecting day and unit.
    """
    bins = E.shape[2] // 2
    day = np.floor(t / DAY) + 1.0
    b = (np.floor((t / DAY - (day - 1.0)) * bins).astype(np.intp)) % bins
    half = np.where(_weekend(day - 1.0), bins, 0)
    scale = scale.copy()
    # a new day: fold the day collected into the envelope (at once wider, slowly narrower); once a day per series
    turn = (day_now > 0) & (day != day_now)
    if turn.any():
        tr = rows[turn]
        f = E[tr].astype(np.float32)
        lo_t, hi_t, lo_e, hi_e = f[:, DAY_LO], f[:, DAY_HI], f[:, ENV_LO], f[:, ENV_HI]
        seen = ~np.isnan(lo_t)
        lo_e = np.where(np.isnan(lo_e), lo_t, lo_e)
        hi_e = np.where(np.isnan(hi_e), hi_t, hi_e)
        f[:, ENV_LO] = np.where(seen, np.minimum(lo_t, lo_e + shrink * (lo_t - lo_e)), f[:, ENV_LO])
        f[:, ENV_HI] = np.where(seen, np.maximum(hi_t, hi_e + shrink * (hi_t - hi_e)), f[:, ENV_HI])
        f[:, DAY_LO] = np.nan
        f[:, DAY_HI] = np.nan
        E[tr] = _store(f)
    # a deviation the storage unit cannot hold: a coarser unit for that series (rare)
    big = np.abs(dev) / scale > _ROOM
    if big.any():
        factor = 2.0 ** np.ceil(np.log2(np.abs(dev[big]) / scale[big] / 1000.0))
        E[rows[big]] = _store(E[rows[big]].astype(np.float32) / factor[:, None, None])
        scale[big] *= factor
    u = dev / scale
    m = margin / scale
    # this half hour and its neighbours: routines do not keep to the minute
    cols = (b[:, None] + np.array([-1, 0, 1])) % bins + half[:, None]
    r2 = rows[:, None]
    lo = np.fmin.reduce(E[r2, ENV_LO, cols].astype(np.float32), axis=1)
    hi = np.fmax.reduce(E[r2, ENV_HI, cols].astype(np.float32), axis=1)
    routine = (u >= lo - m) & (u <= hi + m)  # False where no earlier day was seen (NaN bounds)
    outside = np.maximum(np.maximum(lo - u, u - hi), 0.0) * scale  # NaN bounds stay NaN
    cell = b + half
    E[rows, DAY_LO, cell] = _store(np.fmin(E[rows, DAY_LO, cell].astype(np.float32), u))
    E[rows, DAY_HI, cell] = _store(np.fmax(E[rows, DAY_HI, cell].astype(np.float32), u))
    return routine, outside, day, scale
