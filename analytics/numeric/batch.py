"""Batch runner: the live detector configuration over CSV files of ``timestamp,value``."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from analytics.numeric.bank import SeriesBank
from analytics.numeric.config import DetectorConfig
from analytics.numeric.kernel import TYPES

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Series:
    rel: Path
    stamps: list[str]
    ts: np.ndarray
    values: np.ndarray


class UnreadableFile(ValueError):
    """A CSV ``ioc detect`` cannot score at all (not UTF-8 text, not CSV, no ``timestamp``/``value`` columns)."""


def _stamp(text: str) -> float:
    """Seconds since the epoch of an ISO 8601 time (naive: UTC), NaN when unreadable (scored as missing)."""
    try:
        return float(np.datetime64(text.strip().replace("Z", ""), "ms").astype(np.int64)) / 1000.0
    except (ValueError, TypeError, OverflowError):
        return float("nan")


def _read(path: Path, rel: Path) -> _Series:
    """One ``timestamp,value`` file. A row whose time or value cannot be read (or is not finite) is kept in the
    output and scored as missing (0), as the live pipeline ignores such readings; a file that cannot be read as
    CSV text at all raises :class:`UnreadableFile` with the reason."""
    stamps: list[str] = []
    vals: list[float] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or not {"timestamp", "value"} <= set(reader.fieldnames):
                raise UnreadableFile(f"{rel}: needs a header with columns timestamp,value "
                                     f"(found {(reader.fieldnames or [])[:5]})")
            for row in reader:
                stamps.append(row["timestamp"] if isinstance(row["timestamp"], str) else "")
                try:
                    vals.append(float(row["value"]))
                except (TypeError, ValueError):
                    vals.append(float("nan"))
    except UnicodeDecodeError as err:
        raise UnreadableFile(f"{rel}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except csv.Error as err:
        raise UnreadableFile(f"{rel}: not readable as CSV ({err})") from None
    values = np.array(vals, dtype=np.float64)
    values[~np.isfinite(values)] = np.nan  # 1e400, inf: no physical reading (the live contract refuses them)
    try:  # naive timestamps are taken as UTC; numpy parses ISO 8601 with a space or a 'T'
        ts = np.array([s.strip().replace("Z", "") for s in stamps], dtype="datetime64[ms]").astype(np.int64) / 1000.0
    except (ValueError, TypeError, OverflowError):  # some row's time is unreadable: find which, row by row
        ts = np.array([_stamp(s) for s in stamps], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(ts))
        logger.warning("%s: %d row(s) with an unreadable timestamp (first at data row %d: %r), scored as missing",
                       rel, len(bad), int(bad[0]) + 1, stamps[int(bad[0])][:40])
    return _Series(rel, stamps, ts, values)


def score_series(ts: list[np.ndarray], values: list[np.ndarray], ranges: list[tuple[float, float]] | None = None,
                 config: DetectorConfig | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scores and type codes of several series run side by side in one ``SeriesBank``.

    Row k of every series goes in one batch (each series once), so each score uses only that
    series' readings up to and including its own. ``ranges``: each series' declared range (the
    only thing known beyond its past readings). Returns (scores, kinds) as (series, longest) arrays.
    """
    bank = SeriesBank(config, capacity=len(ts))
    rows = bank.add(len(ts))
    if ranges is not None:
        bank.declare(rows, np.array([r[0] for r in ranges]), np.array([r[1] for r in ranges]))
    lengths = np.array([len(v) for v in values])
    width = int(lengths.max()) if len(lengths) else 0
    ts_mat = np.full((len(ts), width), np.nan)
    val_mat = np.full_like(ts_mat, np.nan)
    scores = np.zeros_like(ts_mat)
    kinds = np.zeros(ts_mat.shape, dtype=np.intp)
    for j in range(len(ts)):
        ts_mat[j, : lengths[j]] = ts[j]
        val_mat[j, : lengths[j]] = values[j]
    for k in tqdm(range(width), disable=not progress, desc="detect", unit="row"):
        live = np.flatnonzero(lengths > k)
        res = bank.update(rows[live], ts_mat[live, k], val_mat[live, k])
        scores[live, k] = res.score
        kinds[live, k] = res.kind
    return scores, kinds


def detect_path(src: Path, out: Path, progress: bool = True, config: DetectorConfig | None = None,
                refused: list[str] | None = None) -> int:
    """Run the default detectors over one CSV or a directory of CSVs (recursively).

    Each file is one series. All series share one ``SeriesBank`` and are fed row by row (row k
    of every file in one batch, each series once), so each score uses only that file's rows up
    to and including its own: the same code and configuration as the live pipeline. A file's
    minimum and maximum are its declared range (live: the metric's physical range), nothing else
    is looked ahead at.

    Args:
        src: a ``timestamp,value`` CSV file, or a directory searched recursively for ``*.csv``.
        out: output directory; each input is written at the same relative path (for a single
            file: ``out/<name>``) with columns ``timestamp,value,anomaly_score,type``.
        progress: show a tqdm progress bar.
        config: detector configuration; defaults to ``DetectorConfig()`` (do not tune per file).
        refused: when given, collects the reason of every file that could not be read (and was skipped).

    Returns:
        Number of files written.
    """
    src, out = Path(src), Path(out)
    files = sorted(src.rglob("*.csv")) if src.is_dir() else [src]
    series: list[_Series] = []
    for file in files:  # one unreadable file is refused with its reason; the others are still scored
        try:
            series.append(_read(file, file.relative_to(src) if src.is_dir() else Path(file.name)))
        except (UnreadableFile, OSError) as err:
            logger.error("refused: %s", err)
            if refused is not None:
                refused.append(str(err))
    if not series:
        logger.warning("no CSV files under %s", src)
        return 0
    # a file's minimum and maximum are its declared range, as a metric's physical range is live
    ranges = [(float(np.nanmin(s.values)), float(np.nanmax(s.values))) if np.isfinite(s.values).any()
              else (0.0, 0.0) for s in series]
    scores, kinds = score_series([s.ts for s in series], [s.values for s in series], ranges, config, progress)
    for j, s in enumerate(series):
        dest = out / s.rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["timestamp", "value", "anomaly_score", "type"])
            m = len(s.values)
            for st, v, sc, kd in zip(s.stamps, s.values, scores[j, :m], kinds[j, :m], strict=True):
                w.writerow([st, repr(float(v)), f"{sc:.6f}", TYPES[kd] if sc > 0 else ""])
    logger.info("wrote %d score files under %s", len(series), out)
    return len(series)
