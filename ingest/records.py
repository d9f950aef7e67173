"""Typed records produced by parsing one MQTT message: what the writer stores and consumers read."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why a message (or one item of a batch) was quarantined; the value is the metric label."""

    BAD_TOPIC = "bad_topic"
    UNKNOWN_KIND = "unknown_kind"
    UNKNOWN_CHANNEL = "unknown_channel"
    BAD_DEVICE_ID = "bad_device_id"
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    BAD_SHAPE = "bad_shape"
    BAD_METRIC = "bad_metric"
    NON_FINITE = "non_finite"
    BAD_TS = "bad_ts"
    FUTURE_TS = "future_ts"
    NOT_JPEG = "not_jpeg"
    IMAGE_TOO_LARGE = "image_too_large"
    TOO_MANY_METRICS = "too_many_metrics"
    TOO_MANY_EVENT_TYPES = "too_many_event_types"
    KIND_CONFLICT = "kind_conflict"
    """The device is in the registry under another kind than the message's topic says (ingest/kinds.py)."""
    DEVICE_RATE = "device_rate"
    """The device sent more bytes than its share (ingest/device_rate.py): kept here unparsed."""
    DB_REJECTED = "db_rejected"
    INTERNAL_ERROR = "internal_error"
    """Handling the message raised where nothing should: kept here with the exception, the session goes on."""


@dataclass(slots=True)
class Reading:
    """One telemetry reading: several metric values of one device at one instant."""

    device_id: str
    kind: str
    ts: datetime
    metrics: dict[str, float]
    seq: int | None = None
    lat: float | None = None
    lon: float | None = None


@dataclass(slots=True)
class StatusUpdate:
    """A device's reported state. ``ts_from_device`` is False when the broker sent a last will without ts."""

    device_id: str
    kind: str
    ts: datetime
    state: str
    reason: str | None
    ts_from_device: bool = True


@dataclass(slots=True)
class DeviceEvent:
    """A device-side alarm such as ``mains_power_lost``."""

    device_id: str
    kind: str
    ts: datetime
    type: str
    severity: str
    detail: dict[str, Any] = field(default_factory=dict)
    #: The whole detail as JSON text when ``detail`` holds a bounded view of it (ingest/detail.py): stored instead.
    stored_detail: str | None = None


@dataclass(slots=True)
class Snapshot:
    """A JPEG still from a camera (validated: SOI/EOI markers and a frame header were found)."""

    device_id: str
    kind: str
    ts: datetime
    jpeg: bytes
    width: int
    height: int


@dataclass(slots=True)
class Rejection:
    """A quarantined message or batch item, with the reason in words."""

    topic: str
    received_at: datetime
    reason: Reason
    detail: str
    payload: bytes
    item_index: int | None = None
    keep_bytes: int | None = None  # keep at most this much of the payload (a device over its quarantine budget)
    #: A new device's records refused under the kind it was first seen with here, held for the registry's decision
    #: at the ingest's commit (ingest/kinds.py): stored after all if the registry gives the device their kind.
    held: list[Record] | None = None


Record = Reading | StatusUpdate | DeviceEvent | Snapshot


@dataclass(slots=True)
class ParsedMessage:
    """Everything one MQTT message produced: good records and rejected parts (either may be empty)."""

    records: list[Record]
    rejections: list[Rejection]
