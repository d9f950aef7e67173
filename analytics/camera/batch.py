"""Offline check of snapshot folders: the interface used for evaluation (``ioc camera-check``).

Each sub-folder of ``src`` is one camera, holding ``<index>.jpg`` snapshots in time order. Every
sequence is fed, in order and without looking ahead, to the same :class:`CameraAnalyser` (default
config) the live pipeline uses. A snapshot whose header claims a picture beyond the device contract
(:class:`ImageTooLarge`), or that cannot be read, is not decoded: it is labelled ``black`` (no picture to
show), logged, and the check goes on.
"""

from __future__ import annotations

import csv
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tqdm import tqdm

from analytics.camera.analyser import CameraAnalyser
from analytics.camera.config import CameraConfig
from analytics.camera.features import ImageTooLarge

logger = logging.getLogger(__name__)

_T0 = datetime(2024, 1, 1, tzinfo=UTC)
_STEP = timedelta(seconds=5)  # nominal snapshot period; only used to stamp findings


def _frames(seq_dir: Path) -> list[tuple[int, Path]]:
    """The ``<index>.jpg`` files of one sequence, sorted numerically by index."""
    out = []
    for p in seq_dir.iterdir():
        if p.suffix.lower() in (".jpg", ".jpeg") and p.stem.isdigit():
            out.append((int(p.stem), p))
    return sorted(out)


def check_dir(src: Path, out_csv: Path, progress: bool = True, config: CameraConfig | None = None) -> int:
    """Analyse every sequence under ``src`` and write ``sequence,index,label,activity`` rows.

    Args:
        src: folder with one sub-folder of ``<index>.jpg`` snapshots per camera.
        out_csv: CSV file to write.
        progress: show a tqdm progress bar over snapshots.
        config: analyser thresholds (default: the live defaults).

    Returns:
        Number of snapshots analysed.
    """
    src, out_csv = Path(src), Path(out_csv)
    seqs = sorted(p for p in src.iterdir() if p.is_dir())
    jobs = [(s, _frames(s)) for s in seqs]
    total = sum(len(f) for _, f in jobs)
    n = 0
    with out_csv.open("w", newline="") as fh, tqdm(total=total, disable=not progress, unit="snap") as bar:
        w = csv.writer(fh)
        w.writerow(["sequence", "index", "label", "activity"])
        for seq_dir, frames in jobs:
            an = CameraAnalyser(seq_dir.name, config)
            for k, (idx, path) in enumerate(frames):
                try:
                    res = an.analyse(path.read_bytes(), _T0 + k * _STEP)
                except (ImageTooLarge, OSError) as err:
                    # refused before any decode, as live (or not readable: a dangling link, no permission);
                    # the sequence goes on with the next snapshot
                    logger.warning("camera check: %s not analysed: %s", path, err)
                    w.writerow([seq_dir.name, idx, "black", "0.0000"])
                except Exception:  # a fault of ours on one snapshot must not end the other cameras' check
                    logger.exception("camera check: %s not analysed", path)
                    w.writerow([seq_dir.name, idx, "black", "0.0000"])
                else:
                    w.writerow([seq_dir.name, idx, res.label, f"{res.activity:.4f}"])
                n += 1
                bar.update(1)
    logger.info("camera check: %d snapshots in %d sequences -> %s", n, len(jobs), out_csv)
    return n
