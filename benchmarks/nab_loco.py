"""Leave-one-category-out check of one detector setting on the NAB kit.

    python benchmarks/nab_loco.py PARAM V1,V2,... [--offsets 0,37,91]

For every value the bank runs over the kit (and, with ``--offsets``, over the kit with each file's
first rows dropped, averaging the scores). Then, for each category in turn, the value is chosen
on the other categories alone and the held-out category is scored with it: at the threshold
optimised on the other categories ("strict") and at the one optimised on all files ("as
scored"). A setting that survives is chosen the same way whichever category is held out, and its
held-out scores are close to the in-sample ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

from analytics.numeric.config import DetectorConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nab_analyse import DEFAULT_NAB, Corpus, parse_sets, scorer


def _norm(ns: Any, geoms: list[Any], raw: float) -> float:
    return float(ns.normalise(raw, ns.null_baseline(geoms, "standard"), ns.perfect_score(geoms, "standard")))


def _score(ns: Any, geoms: list[Any], scores: list[np.ndarray], idx: list[int], thr: float | None = None) -> float:
    """NAB standard of the files ``idx``, at ``thr`` or at their own optimised threshold."""
    g = [geoms[i] for i in idx]
    a = [scores[i] for i in idx]
    if thr is None:
        thr = ns.best_threshold(g, a, "standard")[0]
    return _norm(ns, g, sum(ns.score_file(gi, ai, "standard", thr)["score"] for gi, ai in zip(g, a, strict=True)))


def main(argv: list[str] | None = None) -> int:
    """Run the values, print in-sample and held-out scores per category."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("param", help="DetectorConfig field")
    ap.add_argument("values", help="comma-separated values")
    ap.add_argument("--nab", type=Path, default=DEFAULT_NAB)
    ap.add_argument("--offsets", default="0", help="start offsets averaged over, e.g. 0,37,91")
    args = ap.parse_args(argv)
    ns = scorer(args.nab)
    corpus = Corpus(ns, args.nab, args.nab / "labels" / "dev_windows.json")
    offsets = [int(v) for v in args.offsets.split(",")]
    values = args.values.split(",")
    runs: dict[str, list[tuple[list[Any], list[np.ndarray]]]] = {}
    for v in values:
        cfg = dataclasses.replace(DetectorConfig(), **parse_sets([f"{args.param}={v}"]))
        runs[v] = [(corpus.geoms(o), corpus.run(cfg, o)[0]) for o in offsets]
    geoms = corpus.geoms()
    cats = sorted({g.category for g in geoms if g.n_label_windows})
    everything = list(range(len(geoms)))

    def mean_score(v: str, idx_of: Any, thr_idx: Any = None) -> float:
        out = []
        for g, sc in runs[v]:
            idx = idx_of(g)
            thr = None if thr_idx is None else ns.best_threshold([g[i] for i in thr_idx(g)],
                                                                   [sc[i] for i in thr_idx(g)], "standard")[0]
            out.append(_score(ns, g, sc, idx, thr))
        return float(np.mean(out))

    print(f"{args.param}: " + "  ".join(f"{v}={mean_score(v, lambda g: everything):.2f}" for v in values))
    for c in cats:
        def inside(g: list[Any], c: str = c) -> list[int]:
            return [i for i, gi in enumerate(g) if gi.category == c]

        def rest(g: list[Any], c: str = c) -> list[int]:
            return [i for i, gi in enumerate(g) if gi.category != c]

        on_rest = {v: mean_score(v, rest) for v in values}
        best = max(values, key=lambda v: on_rest[v])
        in_sample = {v: mean_score(v, inside, lambda g: list(range(len(g)))) for v in values}
        strict = mean_score(best, inside, rest)
        print(f"  hold out {c:22s} chosen {best:>8s}  held-out as scored {in_sample[best]:6.2f}  strict "
              f"{strict:6.2f}  (per value: " + " ".join(f"{v}={in_sample[v]:.1f}" for v in values) + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
