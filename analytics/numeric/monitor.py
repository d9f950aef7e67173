"""Live entry point: readings of many devices in, findings out, state that survives restarts."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from analytics.findings import Finding
from analytics.numeric import kernel, save_tiers
from analytics.numeric.bank import SeriesBank
from analytics.numeric.config import DetectorConfig
from analytics.numeric.explain import duration, explain, label
from analytics.numeric.rules import MAINS, DomainRules, infer_kind, utc
from analytics.numeric.table import SeriesTable
from ingest.contract import METRIC_RANGES

logger = logging.getLogger(__name__)

#: Readings are held within ±this before the detectors see them (the stored reading is untouched).
MAX_MAGNITUDE = 1e12
_UNSEEN = object()


class Reading(NamedTuple):
    """One numeric reading as the ingest delivers it."""

    device_id: str
    metric: str
    ts: datetime | float
    """Aware datetime, or seconds since the epoch."""
    value: float


def epoch(ts: datetime | float) -> float:
    """Seconds since the epoch; naive datetimes are taken as UTC."""
    if isinstance(ts, datetime):
        return ts.timestamp() if ts.tzinfo else ts.replace(tzinfo=utc(0).tzinfo).timestamp()
    return float(ts)


class NumericMonitor:
    """Every numeric metric of every device, detected as readings arrive.

    Use ``ingest`` with each batch from the ingest, ``check_silence`` every minute or so, and
    ``to_state``/``from_state`` around restarts. Series are created on first sight; call
    ``set_device`` (or ``register``) to give a device its kind (``"traffic"``, ``"bts"``...) and its
    group (district, corridor) for the group rules.
    """

    def __init__(self, config: DetectorConfig | None = None,
                 ranges: Mapping[str, tuple[float, float]] | None = None) -> None:
        """``ranges``: declared range per metric name, over the contract's ``METRIC_RANGES`` (a deployment's own)."""
        self.config = config or DetectorConfig()
        self.bank = SeriesBank(self.config)
        self.table = SeriesTable()
        self.rules = DomainRules(self.config)
        self.ranges: dict[str, tuple[float, float]] = {}
        #: devices (table indices) whose learned state changed since the last incremental save (device_state.py)
        self.dirty: set[int] = set()
        #: those of them with a consequential change, saved sooner than the rest (save_tiers.py)
        self.urgent: set[int] = set()
        self.marks = save_tiers.Marks()
        self.declare_ranges(ranges)

    def declare_ranges(self, ranges: Mapping[str, tuple[float, float]] | None = None) -> None:
        """Declared range per metric: the contract's ``METRIC_RANGES`` updated with ``ranges``.

        Applied to the series already known (e.g. restored from a state saved under other settings)
        and to every series created later; a metric without a declared range is normalised with the
        range its series has covered so far.
        """
        self.ranges = {**METRIC_RANGES, **{k: (float(v[0]), float(v[1])) for k, v in (ranges or {}).items()}}
        if len(self.table):
            rows = np.arange(len(self.table), dtype=np.intp)
            lo, hi = zip(*(self.ranges.get(m, (0.0, 0.0)) for m in self.table.metrics), strict=True)
            old = self.bank.F[rows][:, [kernel.DLO, kernel.DHI]]
            self.bank.declare(rows, np.array(lo), np.array(hi))
            changed = self.table.dev[rows[(self.bank.F[rows][:, [kernel.DLO, kernel.DHI]] != old).any(axis=1)]]
            self.dirty.update(changed.tolist())
            self.urgent.update(changed.tolist())

    def set_device(self, device_id: str, kind: str = "", group: str = "") -> None:
        """Declare or update a device's kind and group label."""
        t = self.table
        old = (t.device_kind[t.device_idx[device_id]], t.device_group[t.device_idx[device_id]]) \
            if device_id in t.device_idx else None
        d = t.device(device_id, kind, group)
        self.dirty.add(d)
        if old != (t.device_kind[d], t.device_group[d]):
            self.urgent.add(d)

    def register(self, device_id: str, metric: str, kind: str = "", group: str = "") -> int:
        """Row of a series, created if new (idempotent); kind/group as in ``set_device``."""
        known = (device_id, metric) in self.table.keys
        if kind or group or not known:
            self.table.device(device_id, kind or (infer_kind(metric) if not known else ""), group)
        row = self.table.add(device_id, metric)
        self.dirty.add(int(self.table.dev[row]))
        if not known:
            self.urgent.add(int(self.table.dev[row]))
        if row >= self.bank.size:
            self.bank.add(row + 1 - self.bank.size)
            if metric in self.ranges:
                lo, hi = self.ranges[metric]
                self.bank.declare(np.array([row]), lo, hi)
        return row

    def ingest(self, readings: Iterable[Reading | tuple[str, str, datetime | float, float]]) -> list[Finding]:
        """Score and learn a batch of readings (any order, any devices); returns the findings."""
        items = readings if isinstance(readings, list | tuple) else list(readings)
        if not items:
            return []
        devs, metrics, times, vals = zip(*items, strict=True)
        pairs = list(zip(devs, metrics, strict=True))
        rows = list(map(self.table.keys.get, pairs))  # one C loop; new series (None) are registered in order
        if None in rows:
            keys = self.table.keys
            for i, row in enumerate(rows):
                if row is None:
                    row = keys.get(pairs[i])  # registered by an earlier reading of this batch
                    rows[i] = self.register(*pairs[i]) if row is None else row
        ts, last, e = [], _UNSEEN, 0.0
        for t in times:  # the readings of one record share their time object: converted once
            if t is not last:
                last, e = t, epoch(t)
            ts.append(e)
        return self.ingest_arrays(np.array(rows, dtype=np.intp), np.array(ts), np.array(vals, dtype=float))

    def ingest_arrays(self, rows: np.ndarray, ts: np.ndarray, values: np.ndarray) -> list[Finding]:
        """Fast path: rows from ``register``, epoch seconds, values (aligned arrays)."""
        if len(rows) == 0:
            return []
        order = np.lexsort((ts, rows))  # per series in time order
        # A reading past ±1e12 (a broken or hostile device: ±1e308 parses as a float) overflowed the kernels'
        # arithmetic into NaN and out-of-range bin indices; held at the bound it is still far out of line.
        values = np.clip(np.nan_to_num(values[order], nan=0.0, posinf=MAX_MAGNITUDE, neginf=-MAX_MAGNITUDE),
                         -MAX_MAGNITUDE, MAX_MAGNITUDE)
        rows, ts = rows[order], ts[order]
        before = save_tiers.watch(self.bank.F, self.table, rows)
        res = self.bank.update(rows, ts, values)
        self._remember(rows, ts, values, res)
        self.dirty.update(self.table.devices_of(rows).tolist())
        out = self._bank_findings(rows, ts, values, res)
        ruled = self.rules.apply(self.table, rows, ts) + self.rules.frozen(self.table, self.bank.F, rows)
        hit = {(f.device_id, f.series) for f in ruled}
        ruled_rows = [self.table.keys.get((f.device_id, f.series), -1) for f in ruled]
        self.urgent.update(save_tiers.consequential(before, self.bank.F, self.table, self.config, self.marks,
                                                    np.concatenate([rows[res.fired | res.record],
                                                                    np.array(ruled_rows, dtype=np.intp)])))
        if self.rules.frozen_ended:  # an episode's end is saved as soon as its start was
            self.urgent |= self.rules.frozen_ended
            self.rules.frozen_ended = set()
        return [f for f in out if (f.device_id, f.series) not in hit] + ruled

    def _remember(self, rows: np.ndarray, ts: np.ndarray, values: np.ndarray, res: kernel.StepResult) -> None:
        f = self.table.f
        li: np.ndarray | slice
        same = rows[1:] == rows[:-1]  # rows are sorted: a series' readings are adjacent
        if not same.any():  # one reading per series (the usual batch)
            ur, li = rows, slice(None)
            f["prev_v"][ur] = f["last_v"][ur]
            f["prev_ts"][ur] = f["last_ts"][ur]
        else:
            li = np.flatnonzero(np.append(~same, True))
            ur = rows[li]
            prev_in = np.insert(same, 0, False)[li]
            pi = np.maximum(li - 1, 0)
            f["prev_v"][ur] = np.where(prev_in, values[pi], f["last_v"][ur])
            f["prev_ts"][ur] = np.where(prev_in, ts[pi], f["last_ts"][ur])
        f["last_v"][ur], f["last_ts"][ur] = values[li], ts[li]
        f["last_exp"][ur], f["last_sd"][ur] = res.expected[li], res.spread[li]
        f["n"][ur] = self.bank.F[ur, kernel.N]
        f["first_ts"][ur] = self.bank.F[ur, kernel.T_FIRST]
        self.table.silent[ur] = False

    def _bank_findings(self, rows: np.ndarray, ts: np.ndarray, values: np.ndarray,
                       res: kernel.StepResult) -> list[Finding]:
        out = []
        for i in np.flatnonzero(res.fired):
            r = int(rows[i])
            metric = self.table.metrics[r]
            if metric == MAINS:
                continue  # an on/off signal: the mains rule speaks for it
            kind = kernel.TYPES[int(res.kind[i])]
            when = utc(ts[i])
            seasonal = bool(self.bank.F[r, kernel.MODE] > 0)
            # shifts and drifts are about the level, so compare with the slow baseline
            slow = kind in ("level_shift", "drift", "variance_change")
            exp = float(res.baseline[i] if slow else res.expected[i])
            sd = float(res.baseline_spread[i] if slow else res.spread[i])
            rec = ("high" if values[i] > res.expected[i] else "low") if res.record[i] else ""
            history = float(ts[i] - self.bank.F[r, kernel.T_FIRST])
            if self.config.range_tau_s > 0:  # the range fades: do not claim more than it remembers
                history = min(history, self.config.range_tau_s)
            text = explain(kind, metric, when, float(values[i]), exp, sd, seasonal, rec, history)
            out.append(Finding(self.table.devices[r], metric, when, kind, round(float(res.raw[i]), 3), text,
                               {"value": float(values[i]), "expected": exp, "spread": sd}))
        return out

    def check_silence(self, now: datetime | float, since: datetime | float | None = None) -> list[Finding]:
        """Findings for series whose data is overdue; once per silence, cleared by the next reading.

        ``since`` (the service's start after a restart): a series is judged overdue only counting from
        then, so restoring state after downtime does not call every series silent at once.
        """
        now_s = epoch(now)
        rows = self.bank.silent(now_s, None if since is None else epoch(since))
        rows = rows[~self.table.silent[rows]]
        if len(rows) == 0:
            return []
        self.table.silent[rows] = True
        self.table.f["flag_ts"][rows] = now_s
        self.dirty.update(np.unique(self.table.dev[rows]).tolist())
        self.urgent.update(np.unique(self.table.dev[rows]).tolist())
        out = []
        for r in rows:
            late = now_s - self.bank.F[r, kernel.T_LAST]
            usual = self.bank.F[r, kernel.DT_EW]
            metric = self.table.metrics[int(r)]
            out.append(Finding(
                self.table.devices[int(r)], metric, utc(now_s), "silence",
                round(float(np.clip(0.5 + 0.05 * late / max(usual, 1e-9), 0.5, 1.0)), 3),
                f"no {label(metric)} data for {duration(late)} (usually every {duration(usual)})",
                {"silent_s": float(late), "usual_interval_s": float(usual)}))
        groups = {int(self.table.grp[r]) for r in rows if self.table.grp[r] >= 0}
        return out + self.rules.groups(self.table, groups, now_s)

    def to_state(self) -> bytes:
        """Learned state as bytes (numpy ``.npz``; no pickle)."""
        buf = io.BytesIO()
        arrays: dict[str, Any] = self.table.to_arrays()
        arrays["bank"] = np.frombuffer(self.bank.to_state(), dtype=np.uint8)
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_state(cls, data: bytes, config: DetectorConfig | None = None,
                   ranges: Mapping[str, tuple[float, float]] | None = None) -> NumericMonitor:
        """Monitor restored from ``to_state`` output; declared ranges as in the constructor (today's settings)."""
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        mon = cls(config)
        mon.bank = SeriesBank.from_state(arrays.pop("bank").tobytes(), mon.config)
        mon.table = SeriesTable.from_arrays(arrays)
        if len(mon.table) != mon.bank.size:
            raise ValueError("numeric state is inconsistent: registry and bank sizes differ")
        mon.declare_ranges(ranges)
        mon.dirty = set(range(len(mon.table.device_kind)))  # all of it is unsaved in the per-device form
        mon.urgent = set(mon.dirty)
        logger.info("restored numeric state: %d series", mon.bank.size)
        return mon
