"""In-memory state of every device: registry fields plus the latest value of each metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ingest.contract import KINDS
from ingest.records import Reading, Record, Snapshot, StatusUpdate


@dataclass(slots=True)
class DeviceState:
    """What a screen needs to draw one device."""

    device_id: str
    kind: str
    district: str | None = None
    lat: float | None = None
    lon: float | None = None
    state: str = "unknown"
    state_reason: str | None = None
    state_ts: datetime | None = None
    last_seen: datetime | None = None
    latest: dict[str, tuple[datetime, float]] = field(default_factory=dict)
    last_snapshot: datetime | None = None
    health: dict[str, Any] = field(default_factory=dict)  # cameras: latest analysis (label, activity...)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id, "kind": self.kind, "district": self.district,
            "lat": self.lat, "lon": self.lon, "state": self.state, "state_reason": self.state_reason,
            "state_ts": _iso(self.state_ts), "last_seen": _iso(self.last_seen),
            "latest": {m: {"ts": _iso(ts), "value": v} for m, (ts, v) in self.latest.items()},
            "last_snapshot": _iso(self.last_snapshot),
            "health": {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in self.health.items()},
        }


class DeviceTable:
    """All device states, updated from records (the same rules as the database registry)."""

    def __init__(self) -> None:
        self.devices: dict[str, DeviceState] = {}

    def get_or_create(self, device_id: str, kind: str) -> DeviceState:
        dev = self.devices.get(device_id)
        if dev is None:
            dev = self.devices[device_id] = DeviceState(device_id, kind)
        elif dev.kind != kind and kind in KINDS:
            # records reach the hub under their device's registry kind only (ingest/kinds.py): another kind here is
            # the registry's change (``ioc devices set-kind``) or the end of a new id's race between two kinds
            dev.kind = kind
        return dev

    def apply(self, rec: Record, received_at: datetime) -> tuple[DeviceState, bool, bool]:
        """Update from one record.

        Returns:
            The device, whether its position changed, and whether the record told anything new (a
            redelivered reading whose values are all already held tells nothing).
        """
        dev = self.get_or_create(rec.device_id, rec.kind)
        dev.last_seen = received_at if dev.last_seen is None else max(dev.last_seen, received_at)
        moved, news = False, True
        if isinstance(rec, Reading):
            news = False
            for metric, value in rec.metrics.items():
                prev = dev.latest.get(metric)
                if prev is None or rec.ts > prev[0]:
                    dev.latest[metric] = (rec.ts, value)
                    news = True
            if rec.lat is not None and (rec.lat, rec.lon) != (dev.lat, dev.lon):
                dev.lat, dev.lon, moved = rec.lat, rec.lon, True
        elif isinstance(rec, StatusUpdate):
            newer = rec.ts_from_device and (dev.state_ts is None or rec.ts >= dev.state_ts)
            news = newer or (not rec.ts_from_device and dev.state == "unknown")
            if news:
                dev.state, dev.state_reason = rec.state, rec.reason
                dev.state_ts = rec.ts if rec.ts_from_device else dev.state_ts
        elif isinstance(rec, Snapshot):
            dev.last_snapshot = rec.ts
        return dev, moved, news


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat().replace("+00:00", "Z") if ts else None
