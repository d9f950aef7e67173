"""Score the default numeric detectors on the NAB kit: prints NAB scores per category and overall.

    python benchmarks/nab_run.py [--nab /work/shared/eval/nab] [--labels FILE] [--keep DIR] [--no-traffic]

Runs ``analytics.numeric.batch.detect_path`` (the live default ``DetectorConfig()``, each file's
minimum and maximum as its declared range) over the kit's data into a temporary directory, then the
kit's own scorer for the three profiles. Then, computed in memory the same way (``nab_suite.py``):
the leave-one-category-out mean, the short-history score (each file cut to its first 2,000 rows) and
the simulated traffic evaluation (``nab_traffic.py``) at the dev corpus's standard threshold.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from analytics.numeric.batch import detect_path
from analytics.numeric.config import DetectorConfig

DEFAULT_NAB = Path(__file__).resolve().parents[1].parent / "shared" / "eval" / "nab"


def main(argv: list[str] | None = None) -> int:
    """Run detection and scoring; returns the scorer's exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nab", type=Path, default=DEFAULT_NAB, help="NAB kit: data/, labels/, nab_score.py")
    ap.add_argument("--labels", type=Path, default=None, help="labels JSON (default: labels/dev_windows.json)")
    ap.add_argument("--keep", type=Path, default=None, help="write the score files here instead of a temp dir")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-traffic", action="store_true", help="skip the simulated traffic evaluation")
    args = ap.parse_args(argv)
    labels = args.labels or args.nab / "labels" / "dev_windows.json"
    with tempfile.TemporaryDirectory(prefix="nab-scores-") as tmp:
        out = args.keep or Path(tmp)
        t0 = time.perf_counter()
        n = detect_path(args.nab / "data", out, progress=not args.no_progress)
        print(f"scored {n} files in {time.perf_counter() - t0:.1f} s -> {out}", flush=True)
        cmd = [sys.executable, str(args.nab / "nab_score.py"), "--data", str(args.nab / "data"),
               "--labels", str(labels), "--scores", str(out)]
        print("$ " + " ".join(cmd), flush=True)
        rc = subprocess.call(cmd)
    if rc or args.labels:
        return rc
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from nab_suite import Dev, figures
    from nab_traffic import run
    from traffic_rough import run as run_rough

    res = figures(Dev(args.nab), DetectorConfig())
    print(f"leave-one-category-out mean: {res['LOCO mean']:.2f}", flush=True)
    print(f"short history (first {2000:,} rows of each file), standard: {res['short']:.2f}", flush=True)
    if not args.no_traffic:
        tr = run(DetectorConfig(), nab=args.nab, thr=res["threshold"])
        tr.update(run_rough(DetectorConfig(), nab=args.nab, thr=res["threshold"]))
        print("simulated traffic at the dev threshold, standard: "
              + "  ".join(f"{k} {v:.1f}" for k, v in tr.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
