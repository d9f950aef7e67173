"""Devices whose readings make the numeric detectors raise are analysed apart, on their own, for a while.

One device's data can trip a detector (a value whose range overflows a float, a state it corrupted that
raises on every later reading). Without this, every flush holding one of its readings raises as a whole and
is retried device by device: every other device pays a second pass, and learns its readings twice (the
first pass changed their state before it raised). A device found raising is set apart: its readings run
alone after the shared flush, until it has gone ``hold_s`` without raising. The analytics stage and the partition
workers (where a batch that raises was never acknowledged: redelivered and raising for ever, the partition stuck)
both go through :func:`ingest_apart`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from analytics.findings import Finding

Row = tuple[str, str, Any, float]  # device, metric, time (datetime or epoch seconds), value


class Isolation:
    """Which devices' readings run apart from the shared flush (bounded)."""

    def __init__(self, hold_s: float = 600.0, max_devices: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s, self.max_devices, self.clock = hold_s, max_devices, clock
        self._until: dict[str, float] = {}  # device -> set apart until (clock)

    def __contains__(self, device_id: str) -> bool:
        return device_id in self._until

    def __len__(self) -> int:
        return len(self._until)

    def split(self, readings: list[Row]) -> tuple[list[Row], dict[str, list[Row]]]:
        """(readings of the shared flush, readings per device set apart)."""
        if not self._until:
            return readings, {}
        shared: list[Row] = []
        apart: dict[str, list[Row]] = {}
        for row in readings:
            if row[0] in self._until:
                apart.setdefault(row[0], []).append(row)
            else:
                shared.append(row)
        return shared, apart

    def raised(self, device_id: str) -> None:
        """The device's readings raised: set it apart (again) for ``hold_s``."""
        if device_id not in self._until and len(self._until) >= self.max_devices:
            self._until.pop(next(iter(self._until)))  # the oldest: memory stays bounded, it rejoins the flush
        self._until[device_id] = self.clock() + self.hold_s

    def passed(self, device_id: str) -> None:
        """The device's readings ran without raising: it rejoins the shared flush once its hold is over."""
        until = self._until.get(device_id)
        if until is not None and self.clock() >= until:
            del self._until[device_id]


def ingest_apart(ingest: Callable[[list[Row]], list[Finding]], readings: list[Row],
                 isolation: Isolation) -> tuple[list[Finding], dict[str, int]]:
    """``ingest`` over the shared readings, then over each set-apart device's alone; never raises.

    When the shared call raises, each of its devices runs alone. Returns the findings and, per device whose
    readings raised (now set apart), how many of its readings were not analysed.
    """
    shared, apart = isolation.split(readings)
    found: list[Finding] = []
    try:
        found = ingest(shared) if shared else []
    except Exception:
        for row in shared:
            apart.setdefault(row[0], []).append(row)
    failed: dict[str, int] = {}
    for device_id, rows in apart.items():
        try:
            found += ingest(rows)
            isolation.passed(device_id)
        except Exception:
            isolation.raised(device_id)
            failed[device_id] = len(rows)
    return found, failed
