"""Turning parsed messages into the rows of one transaction, and the device-registry write throttle."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from ingest.records import DeviceEvent, ParsedMessage, Reading, Rejection, Snapshot, StatusUpdate
from storage.writes import BatchRows, DeviceRow, SnapshotRow


@dataclass(slots=True)
class Pending:
    """One received message waiting for its rows to commit before it is acked."""

    mid: int
    qos: int
    generation: int
    channel: str
    received_at: datetime
    parsed: ParsedMessage
    size: int = 0  # payload bytes held until the ack


@dataclass(slots=True)
class Batch:
    """Messages committed together in one transaction."""

    messages: list[Pending] = field(default_factory=list)
    done: bool = False


@dataclass(slots=True)
class _DeviceAgg:
    kind: str
    first_seen: datetime
    last_seen: datetime
    lat: float | None = None
    lon: float | None = None
    status: StatusUpdate | None = None
    seq: int | None = None
    seq_ts: datetime | None = None


class RegistryCache:
    """Remembers what this worker last wrote to ``devices`` so unchanged devices are not rewritten.

    Without it every batch would update thousands of registry rows; with it a device's row is written
    on first sight, on a state or position change, and otherwise at most every ``touch_s`` seconds.
    """

    def __init__(self, touch_s: float) -> None:
        self.touch_s = touch_s
        self._written: dict[str, tuple[datetime, float | None, float | None]] = {}

    def wants(self, device_id: str, agg: _DeviceAgg) -> bool:
        prev = self._written.get(device_id)
        if prev is None or agg.status is not None:
            return True
        last_seen, lat, lon = prev
        if agg.lat is not None and (agg.lat, agg.lon) != (lat, lon):
            return True
        return (agg.last_seen - last_seen).total_seconds() >= self.touch_s

    def committed(self, rows: list[DeviceRow]) -> None:
        """Record rows that are now durable."""
        for row in rows:
            prev = self._written.get(row[0])
            lat = row[4] if row[4] is not None else (prev[1] if prev else None)
            lon = row[5] if row[5] is not None else (prev[2] if prev else None)
            self._written[row[0]] = (row[3], lat, lon)


def build_rows(messages: list[Pending], registry: RegistryCache, quarantine_limit: int) -> BatchRows:
    """Flatten the records and rejections of ``messages`` into table rows."""
    rows = BatchRows()
    devices: dict[str, _DeviceAgg] = {}
    snapshots: dict[tuple[str, bytes], SnapshotRow] = {}
    for msg in messages:
        for rec in msg.parsed.records:
            agg = devices.get(rec.device_id)
            if agg is None:
                agg = devices[rec.device_id] = _DeviceAgg(rec.kind, msg.received_at, msg.received_at)
            else:
                agg.first_seen = min(agg.first_seen, msg.received_at)
                agg.last_seen = max(agg.last_seen, msg.received_at)
            if isinstance(rec, Reading):
                for metric, value in rec.metrics.items():
                    rows.telemetry.append((rec.ts, rec.device_id, metric, value, rec.seq))
                if rec.lat is not None:
                    agg.lat, agg.lon = rec.lat, rec.lon
                if rec.seq is not None and (agg.seq_ts is None or rec.ts >= agg.seq_ts):
                    agg.seq, agg.seq_ts = rec.seq, rec.ts
            elif isinstance(rec, StatusUpdate):
                if rec.ts_from_device:
                    rows.status.append((rec.ts, rec.device_id, rec.state, rec.reason, msg.received_at))
                if agg.status is None or rec.ts >= agg.status.ts:
                    agg.status = rec
            elif isinstance(rec, DeviceEvent):
                detail = rec.stored_detail if rec.stored_detail is not None else orjson.dumps(rec.detail).decode()
                rows.events.append((rec.ts, rec.device_id, rec.type, rec.severity, detail, msg.received_at))
            elif isinstance(rec, Snapshot):
                digest = hashlib.sha256(rec.jpeg).digest()
                key = (rec.device_id, digest)
                prev = snapshots.get(key)
                first = prev[2] if prev else rec.ts
                snapshots[key] = (rec.device_id, digest, min(first, rec.ts), rec.ts, rec.width, rec.height,
                                  len(rec.jpeg), rec.jpeg)
        for rej in msg.parsed.rejections:
            rows.quarantine.append(quarantine_row(rej, quarantine_limit))
    rows.snapshots = list(snapshots.values())
    # Sorted, so concurrent transactions lock registry rows in the same order and cannot deadlock.
    for device_id in sorted(devices):
        agg = devices[device_id]
        if not registry.wants(device_id, agg):
            continue
        st = agg.status
        rows.devices.append((device_id, agg.kind, agg.first_seen, agg.last_seen, agg.lat, agg.lon,
                             st.state if st else None, st.reason if st else None,
                             st.ts if st and st.ts_from_device else None, agg.seq))
    return rows


def quarantine_row(rej: Rejection, limit: int) -> tuple[datetime, str, str, str, int, bytes, int, bytes]:
    """The quarantine row for a rejection: payload cut at ``limit`` bytes (or its ``keep_bytes``), hashed whole."""
    topic = rej.topic.replace("\x00", "\\0")[:1024]
    if rej.keep_bytes is not None:
        limit = min(limit, rej.keep_bytes)
    return (rej.received_at, topic, rej.reason.value, rej.detail.replace("\x00", "")[:2000],
            -1 if rej.item_index is None else rej.item_index, rej.payload[:limit], len(rej.payload),
            hashlib.sha256(rej.payload).digest())
