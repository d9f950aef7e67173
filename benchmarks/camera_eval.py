"""Camera-fault quality: generate eval sets for given seeds, run check_dir, score, print figures.

    nice -n 19 python benchmarks/camera_eval.py --seeds 7 21 22 --hard-seeds 8 21 22

Needs the evaluation kit (make_eval.py, score.py, videos/) at --kit.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analytics.camera.batch import check_dir

KIT = Path("/work/shared/eval/camera")
_SUMMARY = re.compile(r"camera: detect=([\d.]+) fa_per_1k=([\d.]+) delay=([\d.na]+)")


def run_one(kit: Path, seed: int, hard: bool, work: Path, verbose: bool) -> tuple[float, float, float, float]:
    """Generate one set, analyse it, score it; returns (detect, fa_per_1k, delay, snapshots/s)."""
    out = work / f"{'hard' if hard else 'std'}{seed}"
    if not (out / "labels.jsonl").exists():
        cmd = [sys.executable, str(kit / "make_eval.py"), "--seed", str(seed), "--out", str(out)]
        subprocess.run([*cmd, "--hard"] if hard else cmd, check=True, capture_output=True)
    det = out / "det.csv"
    t = time.perf_counter()
    n = check_dir(out / "sequences", det, progress=False)
    rate = n / (time.perf_counter() - t)
    res = subprocess.run([sys.executable, str(kit / "score.py"), str(det), "--labels", str(out / "labels.jsonl")],
                         check=True, capture_output=True, text=True).stdout
    if verbose:
        print(res)
    m = _SUMMARY.search(res)
    if m is None:
        raise RuntimeError("unexpected scorer output:\n" + res)
    return float(m.group(1)), float(m.group(2)), float(m.group(3)), rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, nargs="*", default=[7])
    ap.add_argument("--hard-seeds", type=int, nargs="*", default=[8])
    ap.add_argument("--kit", type=Path, default=KIT)
    ap.add_argument("--work", type=Path, default=None, help="keep generated sets here (default: temp dir)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the scorer's per-fault table")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for profile, seeds in (("standard", args.seeds), ("hard", args.hard_seeds)):
            rows = [run_one(args.kit, s, profile == "hard", work, args.verbose) for s in seeds]
            for s, (d, fa, dl, r) in zip(seeds, rows, strict=True):
                print(f"{profile:8s} seed={s:<4d} detect={d:.2f} fa_per_1k={fa:.1f} delay={dl:.1f} ({r:.0f} snap/s)")
            if len(rows) > 1:
                k = len(rows)
                print(f"{profile:8s} mean      detect={sum(r[0] for r in rows) / k:.3f} "
                      f"fa_per_1k={sum(r[1] for r in rows) / k:.2f} delay={sum(r[2] for r in rows) / k:.2f}")


if __name__ == "__main__":
    main()
