"""Small measurement helpers shared by the benchmarks: quantiles, /metrics scrapes, process CPU and memory."""

from __future__ import annotations

import math
import os
import statistics
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, nearest rank; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def scrape(port: int) -> dict[str, float]:
    """A process's /metrics, parsed by prometheus_client, as {sample name with sorted labels: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {_key(s.name, s.labels): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _key(name: str, labels: dict[str, str]) -> str:
    return name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")


def committed(samples: dict[str, float]) -> float:
    """Messages committed by an ingest worker, summed over its label sets."""
    return sum(v for k, v in samples.items()
               if k == "ioc_ingest_messages_committed_total" or k.startswith("ioc_ingest_messages_committed_total{"))


def quantile(q: float, before: dict[str, float], after: dict[str, float], name: str) -> float:
    """histogram_quantile over the increase of ``name`` between two scrapes (used by province_run)."""
    buckets: list[tuple[float, float]] = []
    prefix = f'{name}_bucket{{le="'
    for key, value in after.items():
        if key.startswith(prefix):
            edge = float(key[len(prefix):].split('"', 1)[0])  # float("+Inf") is inf
            buckets.append((edge, value - before.get(key, 0.0)))
    buckets.sort()
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """A process's resident set size in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB per hour."""
    if len(points) < 2:
        return math.nan
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 3600 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else math.nan
