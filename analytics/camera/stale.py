"""Cameras whose snapshots stop arriving, or whose stream telemetry (fps, bitrate) collapses.

Pure bookkeeping: the caller reports arrivals and telemetry, and calls :meth:`StaleMonitor.check`
periodically with the current time; findings come back, nothing is sent anywhere.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime

from analytics.findings import Finding

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Cam:
    last: datetime | None = None
    interval: float = 0.0  # EMA of the snapshot period, seconds
    n: int = 0
    fps: float | None = None
    fps_ref: float | None = None
    kbps: float | None = None
    kbps_ref: float | None = None
    reported: set[str] = field(default_factory=set)


class StaleMonitor:
    """Track snapshot arrivals and stream telemetry per camera.

    Args:
        min_gap_s: never call a camera stale before this many seconds without a snapshot.
        gap_factor: ... nor before this many of its usual snapshot periods.
        collapse_ratio: fps or bitrate below this share of the camera's usual level is a collapse.
    """

    def __init__(self, min_gap_s: float = 30.0, gap_factor: float = 6.0, collapse_ratio: float = 0.3) -> None:
        self.min_gap_s = min_gap_s
        self.gap_factor = gap_factor
        self.collapse_ratio = collapse_ratio
        self._cams: dict[str, _Cam] = {}

    def snapshot(self, device_id: str, ts: datetime) -> None:
        """Record that a snapshot from ``device_id`` arrived at ``ts``."""
        c = self._cams.setdefault(device_id, _Cam())
        if c.last is not None and ts > c.last:
            gap = (ts - c.last).total_seconds()
            # learn the usual period from normal gaps only, so an outage does not stretch it
            if c.n < 3 or gap < 3 * c.interval:
                c.interval = gap if c.n == 0 else 0.8 * c.interval + 0.2 * gap
                c.n += 1
        c.last = ts if c.last is None else max(c.last, ts)
        c.reported.discard("stale")

    def telemetry(self, device_id: str, fps: float | None = None, kbps: float | None = None) -> None:
        """Record the stream's reported frame rate and/or bitrate."""
        c = self._cams.setdefault(device_id, _Cam())
        if fps is not None:
            c.fps = fps
            if c.fps_ref is None or fps >= self.collapse_ratio * c.fps_ref:
                c.fps_ref = fps if c.fps_ref is None else 0.95 * c.fps_ref + 0.05 * fps
        if kbps is not None:
            c.kbps = kbps
            if c.kbps_ref is None or kbps >= self.collapse_ratio * c.kbps_ref:
                c.kbps_ref = kbps if c.kbps_ref is None else 0.95 * c.kbps_ref + 0.05 * kbps

    def check(self, now: datetime, since: datetime | None = None) -> list[Finding]:
        """Findings for cameras that went silent or whose telemetry collapsed (each reported once).

        ``since`` (the service's start after a restart): a gap counts from no earlier than this, so
        the service's own downtime does not make every restored camera stale at once.
        """
        out: list[Finding] = []
        for dev, c in self._cams.items():
            if c.last is not None and c.n >= 2:  # the usual period is known only after a couple of gaps
                gap = (now - c.last).total_seconds()
                judged = gap if since is None else min(gap, (now - since).total_seconds())
                limit = max(self.min_gap_s, self.gap_factor * c.interval)
                if judged > limit and "stale" not in c.reported:
                    c.reported.add("stale")
                    out.append(Finding(dev, "snapshot", now, "stale", min(1.0, 0.5 + gap / (4 * limit)),
                                       f"No snapshot for {gap:.0f} s (usually every {c.interval:.1f} s).",
                                       {"gap_s": gap, "interval_s": c.interval}))
            for name, cur, ref in (("fps", c.fps, c.fps_ref), ("bitrate", c.kbps, c.kbps_ref)):
                key = "collapse_" + name
                if cur is None or ref is None or ref <= 0:
                    continue
                if cur < self.collapse_ratio * ref:
                    if key not in c.reported:
                        c.reported.add(key)
                        out.append(Finding(dev, "snapshot", now, "stale", round(1.0 - cur / ref, 3),
                                           f"Stream {name} collapsed to {cur:g} (usually {ref:.3g}).",
                                           {"metric": name, "value": cur, "usual": ref}))
                else:
                    c.reported.discard(key)
        return out

    def to_state(self) -> bytes:
        """What was learned per camera (last snapshot, usual period, telemetry levels) as JSON bytes.

        Saved with the numeric state, so after a restart a camera that stays dark is still reported.
        """
        cams = {dev: {"last": c.last.isoformat() if c.last else None, "interval": c.interval, "n": c.n,
                      "fps_ref": c.fps_ref, "kbps_ref": c.kbps_ref, "reported": sorted(c.reported)}
                for dev, c in self._cams.items()}
        return json.dumps({"version": 1, "cameras": cams}).encode()

    def restore(self, data: bytes) -> int:
        """Take over cameras from :meth:`to_state` output that this monitor has not heard from yet.

        Returns how many; raises ``ValueError`` for bytes that are not such a state.
        """
        try:
            doc = json.loads(data)
            if doc.get("version") != 1:
                raise ValueError(f"unknown stale-monitor state version {doc.get('version')!r}")
            restored = {
                dev: _Cam(last=datetime.fromisoformat(v["last"]) if v["last"] else None,
                          interval=float(v["interval"]), n=int(v["n"]),
                          fps_ref=None if v["fps_ref"] is None else float(v["fps_ref"]),
                          kbps_ref=None if v["kbps_ref"] is None else float(v["kbps_ref"]),
                          reported=set(v["reported"]) & {"stale"})
                for dev, v in doc["cameras"].items()}
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise ValueError(f"not a stale-monitor state: {err}") from err
        fresh = {dev: c for dev, c in restored.items() if dev not in self._cams}
        self._cams.update(fresh)
        return len(fresh)


def check_stale(last_seen: dict[str, datetime], now: datetime, max_gap_s: float = 60.0) -> list[Finding]:
    """Stateless variant: cameras whose last snapshot is older than ``max_gap_s``."""
    out = []
    for dev, ts in last_seen.items():
        gap = (now - ts).total_seconds()
        if gap > max_gap_s:
            out.append(Finding(dev, "snapshot", now, "stale", min(1.0, 0.5 + gap / (4 * max_gap_s)),
                               f"No snapshot for {gap:.0f} s.", {"gap_s": gap}))
    return out
