"""A traffic-like evaluation beside NAB: the simulator's road sensors with labelled incidents, NAB-scored.

    python benchmarks/nab_traffic.py [--set key=value ...] [--sensors 12] [--seed 7]

Each simulated road sensor (the city simulator's ``TrafficModel``: demand by hour and weekday, the
fundamental diagram, counting noise) gets a few congestions and accidents of random severity at random
times after the first 15 % of its history; its speed, occupancy and flow are written as separate
series, each labelled with NAB-style windows (10 % of the file divided among its incidents, centred on
each onset). Four sets: 5-minute readings over one week (about 2,000 rows, the short history) and four
weeks, 30-second readings over one day and one week. Each set is scored with the kit's standard
profile at its own optimised threshold, and all four at one shared threshold. The declared range of a
series is its file's minimum and maximum, as ``ioc detect`` takes it. ``road-1w`` is the week of 5-minute
data without its flow series: the closest to the team's real-traffic check (speed, occupancy, travel time).

Seeds used while developing: 7 (default). Score other seeds (``--seed``) to check a change generalises.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nab_analyse import DEFAULT_NAB, parse_sets, scorer

from analytics.numeric.batch import score_series
from analytics.numeric.config import DetectorConfig
from simulators.city import build_city
from simulators.incidents import Effect
from simulators.models import TrafficModel
from simulators.scenario import Scenario

METRICS = ("speed_kmh", "occupancy_pct", "flow_veh_h")
#: (name, cadence in seconds, days of history)
SETS = (("5min-1w", 300.0, 7.0), ("5min-4w", 300.0, 28.0), ("30s-1d", 30.0, 1.0), ("30s-1w", 30.0, 7.0))
#: the set closest to the team's real-traffic check (5-minute speed, occupancy and travel time, about a week):
#: also scored on its speed and occupancy series alone (``road-1w``; flow is not in that check)
ROAD_SET = "5min-1w"
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z (a Thursday)


@dataclass(slots=True)
class Series:
    """One labelled series of the set."""

    name: str
    ts: np.ndarray
    values: np.ndarray
    windows: list[tuple[str, str]]


def _iso(t: float) -> str:
    return str(np.datetime64(round(t * 1000), "ms"))


@functools.lru_cache(maxsize=8)
def generate(cadence_s: float, days: float, sensors: int, seed: int) -> list[Series]:
    """Speed, occupancy and flow of ``sensors`` simulated road sensors with labelled incidents."""
    city = build_city(Scenario(seed=seed, scale="small"))
    rng = random.Random(f"nab-traffic:{seed}:{cadence_s}:{days}")
    devices = sorted(city.by_kind("traffic"), key=lambda d: d.id)
    picked = rng.sample(devices, min(sensors, len(devices)))
    n = int(days * 86400 / cadence_s)
    ts = START + cadence_s * np.arange(n)
    out: list[Series] = []
    for dev in picked:
        model = TrafficModel(city, dev, cadence_s)
        # one incident per 2-4 days (at least one), after the probation period, not overlapping
        count = max(1, round(days / rng.uniform(2.0, 4.0)))
        span = ts[-1] - ts[0]
        effects: list[Effect] = []
        for k in range(count):
            lo = ts[0] + span * (0.18 + 0.8 * k / count)
            hi = ts[0] + span * (0.18 + 0.8 * (k + 1) / count) - 7200
            start = rng.uniform(lo, max(lo, hi))
            kind = rng.choice(("congestion", "congestion", "accident"))
            dur = rng.uniform(1200, 3600) if kind == "congestion" else rng.uniform(1800, 5400)
            sev = rng.uniform(0.35, 0.8) if kind == "congestion" else rng.uniform(0.7, 1.0)
            effects.append(Effect(f"i{k}", kind, start, start + dur, "origin", {"severity": sev}))
        vals = {m: np.empty(n) for m in METRICS}
        for i, t in enumerate(ts):
            row = model.sample(float(t), effects)
            for m in METRICS:
                vals[m][i] = row[m]
        half = 0.1 * span / len(effects) / 2.0
        windows = [(_iso(ts[0] + cadence_s * round((e.start - half - ts[0]) / cadence_s)),
                    _iso(ts[0] + cadence_s * round((e.start + half - ts[0]) / cadence_s))) for e in effects]
        for m in METRICS:
            out.append(Series(f"{dev.id}/{m}", ts, vals[m], windows))
    return out


def evaluate(ns: Any, series: list[Series], config: DetectorConfig) -> tuple[list[Any], list[np.ndarray]]:
    """Geometries and scores of a set, run like ``ioc detect`` (declared range = file min/max)."""
    ranges = [(float(s.values.min()), float(s.values.max())) for s in series]
    scores, _ = score_series([s.ts for s in series], [s.values for s in series], ranges, config)
    geoms = [ns.FileGeometry(f"traffic/{s.name}", (s.ts * 1e9).astype("int64").astype("datetime64[ns]"), s.windows)
             for s in series]
    return geoms, [scores[j, : len(s.ts)] for j, s in enumerate(series)]


def standard(ns: Any, geoms: list[Any], scores: list[np.ndarray]) -> float:
    """NAB standard score at the set's own optimised threshold."""
    _, raw = ns.best_threshold(geoms, scores, "standard")
    return float(ns.normalise(raw, ns.null_baseline(geoms, "standard"), ns.perfect_score(geoms, "standard")))


def at(ns: Any, geoms: list[Any], scores: list[np.ndarray], thr: float) -> float:
    """NAB standard score at a given threshold (e.g. the one optimised on the NAB dev corpus)."""
    raw = sum(ns.score_file(g, s, "standard", thr)["score"] for g, s in zip(geoms, scores, strict=True))
    return float(ns.normalise(raw, ns.null_baseline(geoms, "standard"), ns.perfect_score(geoms, "standard")))


def score(ns: Any, geoms: list[Any], scores: list[np.ndarray], thr: float | None) -> float:
    """NAB standard score at ``thr``, or at the set's own optimised threshold when ``thr`` is None."""
    return standard(ns, geoms, scores) if thr is None else at(ns, geoms, scores, thr)


def common_args(ap: argparse.ArgumentParser) -> None:
    """Options every traffic evaluation takes: config overrides, sensors, seed, threshold, NAB kit."""
    ap.add_argument("--set", action="append", default=[], help="DetectorConfig override key=value (experiments)")
    ap.add_argument("--sensors", type=int, default=12)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--thr", type=float, default=None, help="score at this threshold (e.g. the NAB dev one)")
    ap.add_argument("--nab", type=Path, default=DEFAULT_NAB)


def run(config: DetectorConfig, sensors: int = 12, seed: int = 7, nab: Path = DEFAULT_NAB,
        sets: tuple[tuple[str, float, float], ...] = SETS, thr: float | None = None) -> dict[str, float]:
    """Scores per set and over all sets (one shared threshold); with ``thr``, all at that threshold."""
    ns = scorer(nab)
    res: dict[str, float] = {}
    all_g: list[Any] = []
    all_s: list[np.ndarray] = []
    for name, cadence, days in sets:
        g, s = evaluate(ns, generate(cadence, days, sensors, seed), config)
        res[name] = score(ns, g, s, thr)
        if name == ROAD_SET:  # what the team's real-traffic check holds: speed and occupancy, no flow counts
            road = [j for j, geom in enumerate(g) if not geom.relpath.endswith("/flow_veh_h")]
            gr, sr = [g[j] for j in road], [s[j] for j in road]
            res["road-1w"] = score(ns, gr, sr, thr)
        all_g += g
        all_s += s
    res["all"] = score(ns, all_g, all_s, thr)
    return res


def main(argv: list[str] | None = None) -> int:
    """Generate, detect, score and print."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(ap)
    ap.add_argument("--only", default="", help="comma-separated set names, e.g. 5min-1w")
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(DetectorConfig(), **parse_sets(args.set))
    sets = tuple(s for s in SETS if not args.only or s[0] in args.only.split(","))
    t0 = time.perf_counter()
    res = run(cfg, args.sensors, args.seed, args.nab, sets, args.thr)
    print("traffic (simulated, NAB standard): " + "  ".join(f"{k}={v:.1f}" for k, v in res.items())
          + f"  ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
