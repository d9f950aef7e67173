"""Caps on what one device can make a process hold, applied right after parsing (before any sink).

A message on its own may be valid and still hostile in sum: a device that invents a new metric name with
every reading grows the live state, the detectors' series and the telemetry index without bound. The
guard remembers the metric names each device has used and quarantines readings that would take a device
past :data:`ingest.contract.MAX_METRICS_PER_DEVICE` distinct names. Event types likewise: every new type of a
device's alarm is a new alert of its incident (3,000 types from one device blocked the event loop for 35 s and
cost the brain its lease), so a device may use :data:`ingest.contract.MAX_EVENT_TYPES_PER_DEVICE` types.
"""

from __future__ import annotations

import orjson

from ingest import contract as c
from ingest.records import DeviceEvent, ParsedMessage, Reading, Reason, Rejection

#: Devices remembered before the memory is reset (a province has thousands; millions would be an attack).
_MAX_DEVICES = 200_000


class MetricNameGuard:
    """Per-process memory of each device's metric names (bounded)."""

    def __init__(self, max_per_device: int = c.MAX_METRICS_PER_DEVICE,
                 max_event_types: int = c.MAX_EVENT_TYPES_PER_DEVICE) -> None:
        self.max_per_device, self.max_event_types = max_per_device, max_event_types
        self._names: dict[str, set[str]] = {}
        self._types: dict[str, set[str]] = {}

    def apply(self, parsed: ParsedMessage, topic: str) -> ParsedMessage:
        """Move readings and events that would exceed a device's caps from records to rejections (in place)."""
        for rec in parsed.records:  # the usual case, everything admitted: one pass, no new list
            if isinstance(rec, Reading):
                if not self._admit(rec):
                    break
            elif isinstance(rec, DeviceEvent) and not self._admit_type(rec):
                break
        else:
            return parsed
        # Admitting is idempotent (a record admitted above is admitted again), so the second pass decides alike.
        kept = []
        for rec in parsed.records:
            if isinstance(rec, DeviceEvent) and not self._admit_type(rec):
                parsed.rejections.append(Rejection(
                    topic, rec.ts, Reason.TOO_MANY_EVENT_TYPES,
                    f"device {rec.device_id!r} already sent {len(self._types[rec.device_id])} event types; the limit "
                    f"is {self.max_event_types} (new: {rec.type!r})",
                    orjson.dumps({"ts": rec.ts, "type": rec.type, "severity": rec.severity})))
            elif isinstance(rec, Reading) and not self._admit(rec):
                known = len(self._names.get(rec.device_id, ()))
                parsed.rejections.append(Rejection(
                    topic, rec.ts, Reason.TOO_MANY_METRICS,
                    f"device {rec.device_id!r} already uses {known} metric names; the limit is "
                    f"{self.max_per_device} (new: {sorted(set(rec.metrics) - self._names[rec.device_id])[:5]})",
                    orjson.dumps({"ts": rec.ts, "metrics": rec.metrics})))
            else:
                kept.append(rec)
        parsed.records = kept
        return parsed

    def _admit_type(self, rec: DeviceEvent) -> bool:
        types = self._types.get(rec.device_id)
        if types is None:
            if len(self._types) >= _MAX_DEVICES:
                self._types.clear()
            types = self._types[rec.device_id] = set()
        if rec.type in types:
            return True
        if len(types) >= self.max_event_types:
            return False
        types.add(rec.type)
        return True

    def _admit(self, rec: Reading) -> bool:
        names = self._names.get(rec.device_id)
        if names is None:
            if len(self._names) >= _MAX_DEVICES:
                self._names.clear()
            names = self._names[rec.device_id] = set()
        if names.issuperset(rec.metrics):
            return True
        if len(names | rec.metrics.keys()) > self.max_per_device:
            return False
        names.update(rec.metrics)
        return True
