"""Two tiers of saving the numeric detectors' learned state: what is urgent, and when the rest is due.

A device that learned only its slow statistics (profiles, spreads, rarity) loses little if its saved
state is minutes old; a device whose short-term state changed does not: the next leader would re-raise
an episode already reported (a hold or an alert record lost) or miss one in progress (a CUSUM reset).
``NumericMonitor.urgent`` holds the devices with such a *consequential* change since their last save
(marked by :func:`watch` / :func:`consequential` around each step, and on a new series, a new device or
kind or group, a silence, a declared range change); those are saved within the short interval. Every
other changed device is saved at its own slot once per full interval (:class:`SavePlan`), the slots
spread over the interval by a hash of the device id so the full saves do not come in one burst.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from analytics.numeric import kernel
from analytics.numeric.config import DetectorConfig
from analytics.numeric.table import SeriesTable, sorted_unique

if TYPE_CHECKING:  # monitor.py imports this module
    from analytics.numeric.monitor import NumericMonitor

# Short-term bank columns whose change is consequential by itself: the hold (until which reading, after
# which alert's score, of which family).
_HOLD_COLS = [kernel.HOLD, kernel.ALERT, kernel.HKIND]
# The largest recent severity per family: a later one well below it is damped (kernel._calibrate).
_RECORD_COLS = [kernel.M_SPIKE, kernel.M_SHIFT, kernel.M_VAR, kernel.M_OTHER, kernel.M_PAT]
CUSUM_STEPS = 4
CUSUM_FROM = 3
"""A CUSUM is urgent when it first rises across three quarters of its alarm level, then across the level
(a shift its records hold back), once each until it falls below half the level (a ratchet, ``Marks``): a
new leader is not far behind a shift about to be raised. Young series cross the lower steps all the time
(a day-old baseline lags the daily cycle: 15 % of a day-old province's CUSUMs sit above half the level)
and hover about the upper ones; those moves go with the full saves, as do falls."""
RECORD_RISE = 0.1
"""A record moved: it rose by more than this share..."""
RECORD_MIN = 1.0
"""...to at least this severity (1.0 detects on its own): records of routine severities (noise creeping up
over a young series' first days) go with the full saves."""
_RULE_FACTS = ("rule_until", "flag_ts")  # a rule's episode (one finding each) and the group rules' flags


class Marks:
    """Per series row, the highest CUSUM step marked urgent since the CUSUM was last below half its level."""

    def __init__(self) -> None:
        self.peak = np.zeros(0)

    def rise(self, rows: np.ndarray, step: np.ndarray, level: np.ndarray) -> np.ndarray:
        """Where ``step`` passes the row's mark (then the new mark); marks of calm rows are cleared."""
        if len(rows) and rows.max() >= len(self.peak):
            self.peak = np.concatenate([self.peak, np.zeros(int(rows.max()) + 1 - len(self.peak))])
        up = step > self.peak[rows]
        self.peak[rows] = np.where(level < 0.5, 0.0, np.maximum(self.peak[rows], step))
        return up


@dataclass(slots=True)
class Before:
    """The consequential state of some series before a step (``rows``: distinct)."""

    rows: np.ndarray
    hold: np.ndarray
    holding: np.ndarray
    records: np.ndarray
    silent: np.ndarray
    facts: np.ndarray


def _cusum(F: np.ndarray, rows: np.ndarray, cfg: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the CUSUM's step (0 below ``CUSUM_FROM``) and its level as a share of the alarm level."""
    level = np.maximum(F[rows, kernel.CP], F[rows, kernel.CN]) / max(cfg.cusum_h, 1e-9)
    step = np.floor(np.clip(level, 0.0, 1.0) * CUSUM_STEPS)
    return np.where(step >= CUSUM_FROM, step, 0.0), level


def _facts(table: SeriesTable, rows: np.ndarray) -> np.ndarray:
    return np.stack([table.f[k][rows] for k in _RULE_FACTS], axis=1)


def watch(F: np.ndarray, table: SeriesTable, rows: np.ndarray) -> Before:
    """Copy what :func:`consequential` compares, for the series of ``rows``, before they are stepped."""
    ur = sorted_unique(rows)
    return Before(ur, F[ur[:, None], _HOLD_COLS], F[ur, kernel.N] < F[ur, kernel.HOLD], F[ur[:, None], _RECORD_COLS],
                  table.silent[ur], _facts(table, ur))


def consequential(before: Before, F: np.ndarray, table: SeriesTable, cfg: DetectorConfig, marks: Marks,
                  hit: np.ndarray) -> list[int]:
    """Devices (table indices) whose series changed consequentially since ``before``.

    ``hit``: rows that raised a finding or a reading beyond their range (``StepResult.fired | record``, or
    the rows of the rules' findings). Consequential: such a finding; a hold opened, extended or ended; the
    CUSUM rising across 3/4 of its alarm level or the level (once per elevation: ``marks``); an alert record
    rising (``RECORD_RISE``, ``RECORD_MIN``); a silent series heard again; a rule's episode or flag moving.
    """
    ur = before.rows
    if len(ur) == 0:
        return []
    rec = F[ur[:, None], _RECORD_COLS]
    step, level = _cusum(F, ur, cfg)
    moved = (
        (np.isin(ur, hit) if len(hit) else np.zeros(len(ur), dtype=bool))
        | (F[ur[:, None], _HOLD_COLS] != before.hold).any(axis=1)
        | ((F[ur, kernel.N] < F[ur, kernel.HOLD]) != before.holding)
        | marks.rise(ur, step, level)
        | ((rec > before.records * (1.0 + RECORD_RISE)) & (rec >= RECORD_MIN)).any(axis=1)
        | (table.silent[ur] != before.silent)
        | ~_same(_facts(table, ur), before.facts).all(axis=1)
    )
    return table.devices_of(ur[moved]).tolist()


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


def phase(device_id: str, every_s: float) -> float:
    """Offset of a device's full-save slot within the interval: stable across processes (not ``hash()``)."""
    return zlib.crc32(device_id.encode()) / 2**32 * every_s


class SavePlan:
    """Which changed devices a periodic save takes: the urgent ones, and those whose slot came.

    Device ``d``'s slots are ``phase(d) + k * full_every_s``; a pass at ``now`` takes every dirty device
    with a slot in ``(previous pass, now]``. A device that only learns quietly is thus saved once per
    full interval, at its slot; with ``full_every_s`` at or below the pass interval every changed device
    is saved on every pass (the single-tier behaviour).
    """

    def __init__(self, full_every_s: float) -> None:
        self.full_every_s = full_every_s
        self.last: float | None = None  # time of the previous pass
        self._phase = np.zeros(0)  # per device index

    def due(self, names: Sequence[str], dirty: set[int], urgent: set[int], now: float) -> set[int]:
        """Devices to save at ``now`` (``names``: device ids by table index). Advances the plan."""
        last, self.last = self.last, now
        if len(self._phase) < len(names):
            self._phase = np.concatenate([self._phase, [phase(n, self.full_every_s)
                                                        for n in names[len(self._phase):]]])
        taken = set(urgent)
        if last is None or not dirty:  # the first pass: nothing is owed to a slot yet
            return taken
        if now - last >= self.full_every_s:
            return taken | dirty
        quiet = np.fromiter(dirty - taken, dtype=np.intp)
        if len(quiet) == 0:
            return taken
        p = self._phase[quiet]
        every = self.full_every_s
        came = np.floor((now - p) / every) > np.floor((last - p) / every)
        return taken | set(quiet[came].tolist())

    def next_slot(self, device_id: str, after: float) -> float:
        """The first slot of ``device_id`` later than ``after`` (tests, diagnostics)."""
        p = phase(device_id, self.full_every_s)
        return p + (math.floor((after - p) / self.full_every_s) + 1) * self.full_every_s


def take(monitor: NumericMonitor, plan: SavePlan | None = None, now: float | None = None
         ) -> tuple[list[str], set[int]]:
    """Take the devices to save out of the monitor's ``dirty`` and ``urgent``: those ``plan`` has due at ``now``
    (a periodic pass), or without them every changed device (a shutdown or hand-over save; no plan advances).

    Returns the device ids by table index and the devices taken; give back with :func:`untake` what could
    not be saved. The caller keeps the detectors off the monitor meanwhile.
    """
    names = list(monitor.table.device_idx)  # in index order: indices are handed out in insertion order
    taken = plan.due(names, monitor.dirty, monitor.urgent, now) if plan is not None and now is not None \
        else set(monitor.dirty)
    monitor.dirty -= taken
    monitor.urgent -= taken
    return names, taken


def untake(monitor: NumericMonitor, devices: set[int]) -> None:
    """Devices not saved after all: saved with the next pass, whatever their tier."""
    monitor.dirty |= devices
    monitor.urgent |= devices
