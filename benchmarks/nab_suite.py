"""The figures a numeric-detector change is judged by, computed in memory (no score files).

    python benchmarks/nab_suite.py [--set key=value ...] [--no-traffic] [--offsets 0,37]

* NAB dev corpus: standard, low FP, low FN (each at its optimised global threshold);
* leave-one-category-out mean: each category scored at the threshold optimised on the others;
* short history: every dev file cut to its first 2,000 rows (a week of 5-minute data), windows that
  start after the cut dropped, scored with the standard profile;
* the simulated traffic evaluation (``nab_traffic.py``) and its rough road data (``traffic_rough.py``).

Every series is run as ``ioc detect`` runs it: ``score_series`` with the file's minimum and maximum
as its declared range. A change is kept only if neither the LOCO mean nor the short-history score drops.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nab_analyse import DEFAULT_NAB, loco, parse_sets, scorer

from analytics.numeric.batch import _read, score_series
from analytics.numeric.config import DetectorConfig

SHORT_ROWS = 2000
PROFILES = {"standard": "standard", "low FP": "reward_low_FP_rate", "low FN": "reward_low_FN_rate"}


def _norm(ns: Any, geoms: list[Any], raw: float, profile: str = "standard") -> float:
    return float(ns.normalise(raw, ns.null_baseline(geoms, profile), ns.perfect_score(geoms, profile)))


class Dev:
    """The dev corpus read once: series, labels, geometries (full and cut to ``SHORT_ROWS``)."""

    def __init__(self, nab: Path = DEFAULT_NAB) -> None:
        self.ns = scorer(nab)
        self.labels = self.ns.load_labels(str(nab / "labels" / "dev_windows.json"))
        self.rels = sorted(self.labels)
        self.series = [_read(nab / "data" / rel, Path(rel)) for rel in self.rels]

    def _geoms(self, cut: int | None, offset: int = 0) -> list[Any]:
        out = []
        for rel, s in zip(self.rels, self.series, strict=True):
            ts = s.ts[offset:cut]
            stamps = (ts * 1e9).astype("int64").astype("datetime64[ns]")
            wins = [w for w in self.labels[rel] if np.datetime64(w[0]) <= stamps[-1]]
            out.append(self.ns.FileGeometry(rel, stamps, wins))
        return out

    def run(self, config: DetectorConfig, cut: int | None = None,
            offset: int = 0) -> tuple[list[Any], list[np.ndarray]]:
        """Geometries and scores, each file cut to its first ``cut`` rows after dropping ``offset``."""
        vals = [s.values[offset:cut] for s in self.series]
        ts = [s.ts[offset:cut] for s in self.series]
        ranges = [(float(np.nanmin(v)), float(np.nanmax(v))) for v in vals]
        scores, _ = score_series(ts, vals, ranges, config)
        return self._geoms(cut, offset), [scores[j, : len(v)] for j, v in enumerate(vals)]


def figures(dev: Dev, config: DetectorConfig, offsets: tuple[int, ...] = (0,)) -> dict[str, float]:
    """Dev profiles, LOCO mean and short-history score (each the mean over ``offsets``)."""
    ns = dev.ns
    acc: dict[str, list[float]] = {}
    for off in offsets:
        geoms, scores = dev.run(config, offset=off)
        acc.setdefault("threshold", []).append(ns.best_threshold(geoms, scores, "standard")[0])
        for name, prof in PROFILES.items():
            acc.setdefault(name, []).append(_norm(ns, geoms, ns.best_threshold(geoms, scores, prof)[1], prof))
        lo = loco(ns, geoms, scores)
        acc.setdefault("LOCO mean", []).append(float(np.mean(list(lo.values()))))
        for c, v in lo.items():
            acc.setdefault(c.replace("artificialWithAnomaly", "art").replace("real", ""), []).append(v)
        g2, s2 = dev.run(config, cut=SHORT_ROWS + off, offset=off)
        acc.setdefault("short", []).append(_norm(ns, g2, ns.best_threshold(g2, s2, "standard")[1]))
    return {k: float(np.mean(v)) for k, v in acc.items()}


def main(argv: list[str] | None = None) -> int:
    """Print the figures for the default configuration (or overrides)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], help="DetectorConfig override key=value (experiments)")
    ap.add_argument("--nab", type=Path, default=DEFAULT_NAB)
    ap.add_argument("--offsets", default="0", help="start offsets averaged over, e.g. 0,37,91")
    ap.add_argument("--no-traffic", action="store_true")
    ap.add_argument("--no-dev", action="store_true")
    ap.add_argument("--own", action="store_true", help="also score traffic at its own optimised threshold")
    ap.add_argument("--seed", type=int, default=7, help="traffic simulation seed")
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(DetectorConfig(), **parse_sets(args.set))
    t0 = time.perf_counter()
    label = " ".join(args.set) or "defaults"
    thr = None
    if not args.no_dev:
        res = figures(Dev(args.nab), cfg, tuple(int(v) for v in args.offsets.split(",")))
        thr = res["threshold"]
        print(f"[{label}] NAB dev: " + "  ".join(f"{k} {v:.2f}" for k, v in res.items()), flush=True)
    if not args.no_traffic:
        from nab_traffic import run
        from traffic_rough import run as run_rough

        for name, t in (("own threshold", None), ("dev threshold", thr)):
            if (name == "dev threshold" and t is None) or (name == "own threshold" and thr is not None
                                                           and not args.own):
                continue
            tr = run(cfg, nab=args.nab, thr=t, seed=args.seed)
            tr.update(run_rough(cfg, nab=args.nab, thr=t, seed=args.seed))
            print(f"[{label}] traffic at {name}: " + "  ".join(f"{k} {v:.1f}" for k, v in tr.items()), flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
