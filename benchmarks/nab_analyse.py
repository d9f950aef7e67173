"""Where the numeric detectors win and lose NAB points: per window and per file, plus LOCO checks.

    python benchmarks/nab_analyse.py [--set key=value ...] [--files] [--loco] [--fp 5] [--offsets 37,91]

Runs the bank over the kit in memory (same feeding as ``detect_path``: row k of every file in
one batch), scores it with the kit's own scorer and prints, for the standard profile at the
global threshold: each labelled window (caught or missed, where inside the window, the score
that caught it or the best score in it), the false-positive rows per file and their top
scores. ``--loco``: leave-one-category-out thresholds (picked on the other categories, applied
to the held-out one). ``--offsets``: the same with each file's first rows dropped (how much of a
difference between two settings is luck). ``--set`` overrides ``DetectorConfig`` fields, for
experiments only.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from analytics.numeric.bank import SeriesBank
from analytics.numeric.batch import _read
from analytics.numeric.config import DetectorConfig
from analytics.numeric.kernel import TYPES

DEFAULT_NAB = Path(__file__).resolve().parents[1].parent / "shared" / "eval" / "nab"


def scorer(nab: Path) -> ModuleType:
    """The kit's ``nab_score.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location("nab_score", nab / "nab_score.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Corpus:
    """The kit's files read once; ``geoms``/``run`` optionally drop the first ``offset`` rows of each.

    Dropping a few rows at the start changes nothing about the anomalies but shifts every learned
    state a little: the spread of scores over offsets shows how much of a difference is luck.
    """

    def __init__(self, ns: ModuleType, nab: Path, labels: Path) -> None:
        self.ns = ns
        self.labels = ns.load_labels(str(labels))
        self.rels = sorted(self.labels)
        self.series = [_read(nab / "data" / rel, Path(rel)) for rel in self.rels]
        self._geoms: dict[int, list[Any]] = {}

    def geoms(self, offset: int = 0) -> list[Any]:
        """Scorer geometry per file (windows, probation) for the files cut at ``offset``."""
        if offset not in self._geoms:
            self._geoms[offset] = [
                self.ns.FileGeometry(rel, (s.ts[offset:] * 1e9).astype("int64").astype("datetime64[ns]"),
                                     self.labels[rel]) for rel, s in zip(self.rels, self.series, strict=True)]
        return self._geoms[offset]

    def run(self, config: DetectorConfig, offset: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Scores and type codes per file, fed exactly as ``detect_path`` feeds them."""
        bank = SeriesBank(config, capacity=len(self.series))
        rows = bank.add(len(self.series))
        lengths = np.array([len(s.values) - offset for s in self.series])
        m = int(lengths.max())
        ts = np.full((len(self.series), m), np.nan)
        xs = np.full_like(ts, np.nan)
        for j, s in enumerate(self.series):
            ts[j, : lengths[j]] = s.ts[offset:]
            xs[j, : lengths[j]] = s.values[offset:]
        sc = np.zeros_like(ts)
        kd = np.zeros(ts.shape, dtype=np.intp)
        for k in range(m):
            live = np.flatnonzero(lengths > k)
            res = bank.update(rows[live], ts[live, k], xs[live, k])
            sc[live, k] = res.score
            kd[live, k] = res.kind
        return [sc[j, : lengths[j]] for j in range(len(lengths))], [kd[j, : lengths[j]] for j in range(len(lengths))]


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``key=value`` overrides, typed after the config field's default."""
    out: dict[str, Any] = {}
    defaults = DetectorConfig()
    for item in items:
        k, v = item.split("=", 1)
        kind = type(getattr(defaults, k))
        out[k] = v.lower() in ("1", "true", "yes") if kind is bool else kind(v)
    return out


def evaluate(ns: ModuleType, geoms: list[Any], scores: list[np.ndarray], profile: str = "standard") -> dict[str, Any]:
    """Overall and per-category normalised scores at the global threshold."""
    thr, raw = ns.best_threshold(geoms, scores, profile)
    cats = sorted({g.category for g in geoms})
    per: dict[str, float] = {}
    for c in cats:
        idx = [i for i, g in enumerate(geoms) if g.category == c]
        cg = [geoms[i] for i in idx]
        if not sum(g.n_label_windows for g in cg):
            continue
        r = sum(ns.score_file(geoms[i], scores[i], profile, thr)["score"] for i in idx)
        per[c] = ns.normalise(r, ns.null_baseline(cg, profile), ns.perfect_score(cg, profile))
    total = ns.normalise(raw, ns.null_baseline(geoms, profile), ns.perfect_score(geoms, profile))
    return {"threshold": thr, "score": total, "per_category": per}


def loco(ns: ModuleType, geoms: list[Any], scores: list[np.ndarray]) -> dict[str, float]:
    """Each category scored at the threshold optimised on all the other categories."""
    out = {}
    for c in sorted({g.category for g in geoms}):
        inn = [i for i, g in enumerate(geoms) if g.category == c]
        if not sum(geoms[i].n_label_windows for i in inn):
            continue
        rest = [i for i, g in enumerate(geoms) if g.category != c]
        thr, _ = ns.best_threshold([geoms[i] for i in rest], [scores[i] for i in rest], "standard")
        cg = [geoms[i] for i in inn]
        r = sum(ns.score_file(geoms[i], scores[i], "standard", thr)["score"] for i in inn)
        out[c] = ns.normalise(r, ns.null_baseline(cg, "standard"), ns.perfect_score(cg, "standard"))
    return out


def describe(ns: ModuleType, geoms: list[Any], scores: list[np.ndarray], kinds: list[np.ndarray],
             thr: float, top_fp: int) -> None:
    """Per file: windows caught/missed and false positives at threshold ``thr``."""
    for g, a, k in zip(geoms, scores, kinds, strict=True):
        det = a >= thr
        lines = []
        for w, (left, right) in enumerate(g.bounds):
            rows = np.flatnonzero(det[left : right + 1]) + left
            rows = rows[rows >= g.probation]
            best = left + int(np.argmax(a[left : right + 1]))
            if len(rows):
                r = int(rows[0])
                pos = (r - left) / (right - left + 1)
                lines.append(f"  win{w} [{left},{right}] HIT at {pos:.2f} score {a[r]:.3f} {TYPES[k[r]]}")
            else:
                lines.append(f"  win{w} [{left},{right}] miss (best {a[best]:.3f} at "
                             f"{(best - left) / (right - left + 1):.2f} {TYPES[k[best]]})")
        inwin = np.zeros(g.n, dtype=bool)
        for left, right in g.bounds:
            inwin[left : right + 1] = True
        fp = np.flatnonzero(det & ~inwin & (np.arange(g.n) >= g.probation))
        fp_txt = ", ".join(f"{int(r)}:{a[r]:.2f}{TYPES[k[r]][:5]}" for r in fp[np.argsort(-a[fp])][:top_fp])
        r = ns.score_file(g, a, "standard", thr)["score"]
        print(f"{g.relpath} n={g.n} prob={g.probation} raw={r:+.2f} fp={len(fp)} {fp_txt}")
        for line in lines:
            print(line)


def main(argv: list[str] | None = None) -> int:
    """Run, score and print the analysis."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nab", type=Path, default=DEFAULT_NAB)
    ap.add_argument("--labels", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], help="DetectorConfig override key=value")
    ap.add_argument("--files", action="store_true", help="per-file, per-window detail")
    ap.add_argument("--fp", type=int, default=5, help="false-positive rows listed per file")
    ap.add_argument("--loco", action="store_true", help="leave-one-category-out thresholds")
    ap.add_argument("--offsets", default="", help="also score with the first K rows dropped, e.g. 37,91,143")
    args = ap.parse_args(argv)
    ns = scorer(args.nab)
    corpus = Corpus(ns, args.nab, args.labels or args.nab / "labels" / "dev_windows.json")
    geoms = corpus.geoms()
    cfg = dataclasses.replace(DetectorConfig(), **parse_sets(args.set))
    scores, kinds = corpus.run(cfg)
    res = evaluate(ns, geoms, scores)
    if args.files:
        describe(ns, geoms, scores, kinds, res["threshold"], args.fp)
    for prof in ("reward_low_FP_rate", "reward_low_FN_rate"):
        print(f"{prof}: {evaluate(ns, geoms, scores, prof)['score']:.2f}")
    cats = "  ".join(f"{c}={v:.1f}" for c, v in res["per_category"].items())
    print(f"per category: {cats}")
    if args.loco:
        print("LOCO threshold: " + "  ".join(f"{c}={v:.1f}" for c, v in loco(ns, geoms, scores).items()))
    if args.offsets:
        offs = [int(v) for v in args.offsets.split(",")]
        runs = [evaluate(ns, corpus.geoms(o), corpus.run(cfg, o)[0]) for o in offs]
        spread = " ".join(f"{o}:{r['score']:.2f}" for o, r in zip(offs, runs, strict=True))
        print(f"start offsets {spread}  mean {np.mean([r['score'] for r in runs]):.2f}")
    print(f"threshold {res['threshold']:.4f}  NAB standard: {res['score']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
