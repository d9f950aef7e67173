"""Simulated time: real time, or accelerated replay that never runs ahead of the wall clock."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

logger = logging.getLogger(__name__)


def iso_utc(ts: float) -> str:
    """RFC 3339 in UTC with milliseconds (``2026-11-22T01:15:00.120Z``)."""
    ms = round(ts * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def parse_time(value: str) -> float:
    """Epoch seconds from RFC 3339 (``2026-11-20T00:00:00+07:00``); a bare date means local midnight (UTC+7)."""
    text = value.strip().replace("Z", "+00:00")
    if len(text) == 10:
        text += "T00:00:00+07:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"time {value!r} needs a UTC offset (Z or +07:00)")
    return dt.astimezone(UTC).timestamp()


class SimClock:
    """Maps real elapsed time to simulated time: ``sim = start + elapsed * speed``, capped at the wall clock.

    The cap keeps every timestamp acceptable to the ingest (which refuses ts more than 5 minutes ahead):
    a replay that catches up with the present simply continues in real time.
    """

    def __init__(self, start: float, speed: float = 1.0, wall_start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.start = start
        self.speed = speed
        # Wall-clock based (not monotonic) so that several processes can share one start instant.
        self.wall_start = time.time() if wall_start is None else wall_start

    def now(self) -> float:
        """Current simulated time (epoch seconds)."""
        wall = time.time()
        return min(self.start + (wall - self.wall_start) * self.speed, wall)

    def real_seconds_until(self, sim_ts: float) -> float:
        """Real seconds until the clock reaches ``sim_ts`` (0 if it already has)."""
        ahead = sim_ts - self.now()
        if ahead <= 0:
            return 0.0
        wall_gap = sim_ts - time.time()
        # Past the wall clock the simulation runs at speed 1.
        return max(ahead / self.speed, wall_gap)

    def elapsed(self) -> float:
        """Real seconds since the clock was created."""
        return time.time() - self.wall_start
