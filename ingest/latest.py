"""The newest value of each (device, metric), coalesced in the worker and written every few seconds.

``telemetry_latest`` (migration 0013) is derived data: the API's start seed, the device page and Grafana's
slowest-sensors table read it instead of sorting the last minutes of readings. Upserting it in every batch's
transaction cost about 40 % more time per batch (every reading an UPDATE); coalesced over
``IOC_INGEST__LATEST_EVERY_S`` a key is written at most once per interval, whatever the rate. A worker killed
between two writes leaves some keys one interval old until their next reading: the readings themselves
are committed and acked as before.

Cost on the hot path: the committed telemetry rows themselves are held (device -> metric -> row), so folding a
batch in allocates nothing per value, and the write hands the held rows to :func:`storage.writes.write_latest`
as one JSON document (no per-row tuples, columns or array encoding in Python). The first version (a
``(device, metric) -> (ts, value)`` dict, rows sorted and transposed into four arrays) cost the worker
~11 us of CPU per message in ``benchmarks.ingest_bench``'s drain (70 against 59 us/msg).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from storage.writes import LatestRow, TelemetryRow, write_latest


class LatestValues:
    """Newest committed value per (device, metric), waiting to be written."""

    def __init__(self) -> None:
        # device -> metric -> the newest committed row (ts, device, metric, value, seq)
        self._pending: dict[str, dict[str, TelemetryRow]] = {}

    def __len__(self) -> int:
        """Keys (device, metric) pending."""
        return sum(map(len, self._pending.values()))

    def add(self, rows: Iterable[TelemetryRow]) -> None:
        """Fold committed readings ``(ts, device, metric, value, seq)`` in, keeping the newest per key (the first
        of equal timestamps)."""
        pending = self._pending
        device: str | None = None
        held_of: dict[str, TelemetryRow] = {}
        for row in rows:
            if row[1] is not device:  # a reading's rows come together and share the device id's object
                device = row[1]
                got = pending.get(device)
                if got is None:
                    got = pending[device] = {}
                held_of = got
            held = held_of.get(row[2])
            if held is None or row[0] > held[0]:
                held_of[row[2]] = row

    def take(self) -> list[LatestRow]:
        """Everything pending, as ``(device, metric, ts, value)`` rows; pending is then empty."""
        taken, self._pending = self._pending, {}
        return [(device, metric, row[0], row[3]) for device, held in taken.items() for metric, row in held.items()]

    def put_back(self, rows: Iterable[LatestRow]) -> None:
        """Return rows whose write failed (newer values that arrived meanwhile win)."""
        self.add((ts, device, metric, value, None) for device, metric, ts, value in rows)

    async def flush(self, conn: Any) -> int:
        """Write what is pending; on failure keep it for the next try and raise. Returns rows written."""
        taken, self._pending = self._pending, {}
        try:
            await write_latest(conn, taken)
        except BaseException:
            for held in taken.values():  # newer values that arrived meanwhile win
                self.add(held.values())
            raise
        return sum(map(len, taken.values()))
