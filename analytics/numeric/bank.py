"""A bank of series held in numpy arrays, updated a batch of readings at a time."""

from __future__ import annotations

import io
import json
import logging

import numpy as np

from analytics.numeric import art, kernel, likelihood, routine
from analytics.numeric.config import DetectorConfig
from analytics.numeric.kernel import N_COLS, StepResult

logger = logging.getLogger(__name__)

STATE_VERSION = 3
ARRAYS = ("F", "D", "W", "R", "Hb", "Q", "S", "Ew", "Ec", "Ep", "Ek", "Aa", "Awn", "Aar", "Ac", "Au", "Lk", "En")
RESULT_FIELDS = ("score", "raw", "kind", "expected", "spread", "fired", "baseline", "baseline_spread", "record")


class SeriesBank:
    """State of many univariate series, struct-of-arrays, with a vectorised ``update``.

    Series are addressed by their row index (0..n-1) as returned by ``add``; the pipeline keeps
    the mapping from (device, metric) to row (see ``NumericMonitor``).
    """

    def __init__(self, config: DetectorConfig | None = None, capacity: int = 64) -> None:
        self.config = config or DetectorConfig()
        self.size = 0
        cap = max(1, capacity)
        self.F = np.zeros((cap, N_COLS), dtype=np.float64)
        self.D = np.zeros((cap, self.config.day_bins), dtype=np.float32)
        self.W = np.zeros((cap, self.config.week_bins), dtype=np.float32)
        self.R = np.zeros((cap, kernel.RARITY_BINS), dtype=np.float32)
        self.Hb = np.zeros((cap, self.config.history), dtype=np.float32)
        nov = self.config.novelty_w > 0  # the novelty tables exist only when the detector is on
        self.Q = np.zeros((cap, self.config.novelty_bytes if nov else 0), dtype=np.uint8)
        self.S = np.zeros((cap, self.config.novelty_orders + 1 if nov else 0), dtype=np.int8)
        # so are the relative-entropy windows
        ent = self.config.re_w > 0 or self.config.art_re or self.config.lik_mode > 0
        self.Ew = np.zeros((cap, self.config.re_window if ent else 0), dtype=np.uint8)
        self.Ec = np.zeros((cap, self.config.re_bins if ent else 0), dtype=np.float32)
        self.Ep = np.zeros((cap, self.config.re_slots if ent else 0, self.config.re_bins), dtype=np.float32)
        self.Ek = np.zeros((cap, self.config.re_slots if ent else 0), dtype=np.float32)
        on = self.config.art_w > 0  # and the adaptive-resonance windows
        slots = self.config.art_slots if on else 0
        self.Aa = np.zeros((cap, art.N_SCALARS if on else 0), dtype=np.float64)
        self.Awn = np.zeros((cap, art.WIN if on else 0), dtype=np.float32)
        self.Aar = np.zeros((cap, self.config.art_trend + 1 if on else 0), dtype=np.float32)
        self.Ac = np.zeros((cap, slots, art.COMP), dtype=np.float32)
        self.Au = np.zeros((cap, slots), dtype=np.float32)
        self.Lk = np.zeros((cap, likelihood.N_SCALARS if self.config.lik_mode else 0), dtype=np.float64)
        tod = self.config.tod_bins > 0  # and the time-of-day envelopes (weekday and weekend bins)
        self.En = np.zeros((cap, routine.N_ROWS if tod else 0, 2 * self.config.tod_bins if tod else 0),
                           dtype=np.float16)

    @property
    def capacity(self) -> int:
        """Rows allocated (grows by doubling)."""
        return int(self.F.shape[0])

    def add(self, count: int = 1) -> np.ndarray:
        """Allocate ``count`` new series; returns their row indices."""
        need = self.size + count
        if need > self.capacity:
            cap = max(need, 2 * self.capacity)
            for name in ARRAYS:
                old = getattr(self, name)
                grown = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
                grown[: self.size] = old[: self.size]
                setattr(self, name, grown)
        rows = np.arange(self.size, need, dtype=np.intp)
        self.size = need
        return rows

    def declare(self, rows: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float) -> None:
        """Declare the physical range of series (``lo < hi``; otherwise the declaration is removed).

        The detectors normalise with it from the first reading (otherwise with the range covered so far).
        """
        rows = np.asarray(rows, dtype=np.intp)
        lo_a = np.broadcast_to(np.asarray(lo, dtype=np.float64), rows.shape)
        hi_a = np.broadcast_to(np.asarray(hi, dtype=np.float64), rows.shape)
        ok = np.isfinite(lo_a) & np.isfinite(hi_a) & (hi_a > lo_a)
        self.F[rows, kernel.DLO] = np.where(ok, lo_a, 0.0)
        self.F[rows, kernel.DHI] = np.where(ok, hi_a, 0.0)

    def update(self, rows: np.ndarray, ts: np.ndarray, values: np.ndarray) -> StepResult:
        """Score then learn a batch of readings.

        Args:
            rows: series row per reading (a series may appear several times).
            ts: reading time, seconds since the epoch (float), per reading.
            values: reading value per reading; NaN readings are ignored (score 0).

        Returns:
            Per-reading results aligned with the input. Readings of one series are processed in
            the order given, each scored before it is learned (strictly causal).
        """
        rows = np.asarray(rows, dtype=np.intp)
        ts = np.asarray(ts, dtype=np.float64)
        values = np.asarray(values, dtype=np.float64)
        m = len(rows)
        out = StepResult(score=np.zeros(m), raw=np.zeros(m), kind=np.zeros(m, dtype=np.intp),
                         expected=np.full(m, np.nan), spread=np.full(m, np.nan),
                         fired=np.zeros(m, dtype=bool), baseline=np.full(m, np.nan),
                         baseline_spread=np.full(m, np.nan), record=np.zeros(m, dtype=bool))
        ok = np.isfinite(values) & np.isfinite(ts)
        if m == 0 or not ok.any():
            return out
        idx = np.flatnonzero(ok) if not ok.all() else None  # None: every reading
        r = rows if idx is None else rows[idx]
        if len(r) == 1 or bool((r[1:] > r[:-1]).all()):  # ascending rows, one reading per series (the usual batch)
            rounds = [idx]
        else:  # occurrence rank of each reading within its series: round k holds each series once
            order = np.argsort(r, kind="stable")
            rs = r[order]
            start = np.empty(len(rs), dtype=bool)
            start[0] = True
            np.not_equal(rs[1:], rs[:-1], out=start[1:])
            first_pos = np.maximum.accumulate(np.where(start, np.arange(len(rs)), 0))
            rank = np.empty(len(rs), dtype=np.intp)
            rank[order] = np.arange(len(rs)) - first_pos
            at = np.arange(m) if idx is None else idx
            rounds = [at[rank == k] for k in range(int(rank.max()) + 1)]
        for sel in rounds:
            res = kernel.step(self.config, self.F, self.D, self.W, self.R, self.Hb, self.Q, self.S,
                              *((rows, ts, values) if sel is None else (rows[sel], ts[sel], values[sel])),
                              (self.Ew, self.Ec, self.Ep, self.Ek), (self.Aa, self.Awn, self.Aar, self.Ac, self.Au),
                              self.Lk, self.En)
            if sel is None:  # the step's own arrays, as the fields' types
                return StepResult(*(np.asarray(getattr(res, f), dtype=getattr(out, f).dtype) for f in RESULT_FIELDS))
            for name in RESULT_FIELDS:
                getattr(out, name)[sel] = getattr(res, name)
        return out

    def silent(self, now: float, since: float | None = None) -> np.ndarray:
        """Rows whose next reading is overdue at ``now`` (seconds since the epoch).

        ``since``: lateness counts from no earlier than this (the service's own start): while the
        service was down nobody could hear the series, so its downtime is not the series' silence.
        """
        F = self.F[: self.size]
        cfg = self.config
        dt = F[:, kernel.DT_EW]
        last = F[:, kernel.T_LAST] if since is None else np.maximum(F[:, kernel.T_LAST], since)
        late = now - last
        due = (F[:, kernel.N] >= 3) & (dt > 0) & (late > np.maximum(cfg.silence_factor * dt, cfg.silence_min_s))
        return np.flatnonzero(due)

    def nbytes_per_series(self) -> float:
        """State bytes per allocated series."""
        return float(sum(getattr(self, name).nbytes for name in ARRAYS)) / self.capacity

    def to_state(self) -> bytes:
        """Serialise the learned state (numpy ``.npz``, no pickle)."""
        buf = io.BytesIO()
        meta = json.dumps({"version": STATE_VERSION, "config": self.config.as_dict()})
        arrays = {name: getattr(self, name)[: self.size] for name in ARRAYS}
        np.savez_compressed(buf, meta=np.array(meta), **arrays)
        return buf.getvalue()

    @classmethod
    def from_state(cls, data: bytes, config: DetectorConfig | None = None) -> SeriesBank:
        """Rebuild a bank saved by ``to_state``.

        Raises:
            ValueError: the state has another version or array shapes than this configuration.
        """
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            version = meta.get("version")
            if version not in (2, STATE_VERSION):
                raise ValueError(f"unsupported numeric state version {version}")
            bank = cls(config, capacity=len(z["F"]))
            bank.add(len(z["F"]))
            for name in ARRAYS:
                target = getattr(bank, name)
                if name == "F" and z[name].shape[1] < target.shape[1]:  # columns added since start at 0
                    target[:, : z[name].shape[1]] = z[name]
                    continue
                if name not in z.files or (z[name].ndim > 1 and z[name].shape[1] == 0):
                    continue  # arrays added since, or of a detector then off (entropy, ART windows), start empty
                if target.shape != z[name].shape:
                    raise ValueError(f"state array {name} has shape {z[name].shape}, expected {target.shape}")
                target[:] = z[name]
        return bank
