"""Run several synthetic series through one ``SeriesBank`` side by side, once per configuration.

A detector step costs about the same for one series as for a handful (per-call overhead dominates), so
the numeric tests feed every series a module needs under one configuration in a single bank (row k of
each series in one batch, as ``ioc detect`` does) and share the result between tests. Each series keeps
a row of its own, so its results are those of a bank of its own (the kernel never mixes rows).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from analytics.numeric.bank import SeriesBank
from analytics.numeric.config import DetectorConfig


@dataclass(frozen=True, slots=True)
class Road:
    """One series to run: times, values and the range declared before the first reading."""

    ts: np.ndarray
    x: np.ndarray
    declared: tuple[float, float] | None = None


@dataclass(frozen=True, slots=True)
class Run:
    """Per-reading detector output of one series."""

    score: np.ndarray
    kind: np.ndarray
    fired: np.ndarray
    record: np.ndarray

    def fired_at(self) -> list[int]:
        """Readings that raised a finding."""
        return [int(k) for k in np.flatnonzero(self.fired)]


def run_together(cfg: DetectorConfig, roads: Mapping[str, Road]) -> dict[str, Run]:
    """Every road through one bank of ``cfg``, each reading scored before it is learned."""
    bank = SeriesBank(cfg, capacity=len(roads))
    rows = bank.add(len(roads))
    items = list(roads.values())
    for row, road in zip(rows, items, strict=True):
        if road.declared is not None:
            bank.declare(np.array([row]), *road.declared)
    lengths = np.array([len(r.ts) for r in items])
    width = int(lengths.max())
    ts = np.full((len(items), width), np.nan)
    x = np.full_like(ts, np.nan)
    for j, road in enumerate(items):
        ts[j, : lengths[j]], x[j, : lengths[j]] = road.ts, road.x
    score, fired, record = np.zeros_like(ts), np.zeros(ts.shape, dtype=bool), np.zeros(ts.shape, dtype=bool)
    kind = np.zeros(ts.shape, dtype=np.intp)
    for k in range(width):
        live = np.flatnonzero(lengths > k)
        res = bank.update(rows[live], ts[live, k], x[live, k])
        score[live, k], kind[live, k], fired[live, k], record[live, k] = res.score, res.kind, res.fired, res.record
    return {name: Run(score[j, : n], kind[j, : n], fired[j, : n], record[j, : n])
            for j, (name, n) in enumerate(zip(roads, lengths, strict=True))}


class SharedRuns:
    """A module's roads, each run once under each configuration that a test asks of it.

    ``plan`` names, per configuration, every road that some test of the module runs under it; the first
    request of a configuration runs all of them together and keeps the results for the other tests.
    """

    def __init__(self, roads: Mapping[str, Callable[[], Road]],
                 plan: Mapping[DetectorConfig, tuple[str, ...]]) -> None:
        self._make = roads
        self._plan = plan
        self._roads: dict[str, Road] = {}
        self._runs: dict[DetectorConfig, dict[str, Run]] = {}

    def road(self, name: str) -> Road:
        """The road's series (built once)."""
        if name not in self._roads:
            self._roads[name] = self._make[name]()
        return self._roads[name]

    def run(self, cfg: DetectorConfig, name: str) -> Run:
        """The detector output of ``cfg`` on road ``name`` (which the plan must list under ``cfg``)."""
        if cfg not in self._runs:
            self._runs[cfg] = run_together(cfg, {n: self.road(n) for n in self._plan[cfg]})
        return self._runs[cfg][name]
