"""The newest value of each (device, metric), coalesced in the worker and written every few seconds.

``telemetry_latest`` (migration 0013) is derived data: the API's start seed, the device page and Grafana's
slowest-sensors table read it instead of sorting the last minutes of readings. Upserting it in every batch's
transaction cost about 40 % more time per batch (every reading an UPDATE); coalesced over
``IOC_INGEST__LATEST_EVERY_S`` a key is written at most once per interval, whatever the rate. A worker killed
between two writes leaves some keys one interval old until their next reading: the readings themselves
are committed and acked as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from storage.writes import LatestRow, TelemetryRow, write_latest


class LatestValues:
    """Newest committed value per (device, metric), waiting to be written."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], tuple[datetime, float]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, rows: Iterable[TelemetryRow]) -> None:
        """Fold committed readings ``(ts, device, metric, value, seq)`` in, keeping the newest per key."""
        pending = self._pending
        for ts, device, metric, value, _seq in rows:
            key = (device, metric)
            held = pending.get(key)
            if held is None or ts > held[0]:
                pending[key] = (ts, value)

    def take(self) -> list[LatestRow]:
        """Everything pending, as rows for :func:`storage.writes.write_latest`; pending is then empty."""
        taken, self._pending = self._pending, {}
        return [(device, metric, ts, value) for (device, metric), (ts, value) in taken.items()]

    def put_back(self, rows: Iterable[LatestRow]) -> None:
        """Return rows whose write failed (newer values that arrived meanwhile win)."""
        self.add((ts, device, metric, value, None) for device, metric, ts, value in rows)

    async def flush(self, conn: Any) -> int:
        """Write what is pending; on failure keep it for the next try and raise. Returns rows written."""
        rows = self.take()
        try:
            await write_latest(conn, rows)
        except BaseException:
            self.put_back(rows)
            raise
        return len(rows)
