"""Response models of the REST API (``XPublic`` naming)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class DevicePublic(BaseModel):
    """A device as the registry knows it."""

    device_id: str
    kind: str
    first_seen: datetime
    last_seen: datetime
    lat: float | None = None
    lon: float | None = None
    district: str | None = Field(None, description="district code the service placed the device in (from its "
                                 "position; written to the registry within IOC_LIVE__REGISTRY_SYNC_S)")
    state: str = Field(description="online, offline, degraded, or unknown (no status received yet)")
    state_reason: str | None = None
    state_ts: datetime | None = None
    last_seq: int | None = None


class LatestValue(BaseModel):
    """The newest value of one metric."""

    metric: str
    ts: datetime
    value: float


class DeviceDetail(DevicePublic):
    """A device with the newest value of each of its metrics."""

    latest: list[LatestValue]


class TelemetryPoint(BaseModel):
    """One raw value."""

    ts: datetime
    metric: str
    value: float
    seq: int | None = None


class TelemetryBucket(BaseModel):
    """Aggregates of one metric over one time bucket."""

    bucket: datetime
    metric: str
    avg: float
    min: float
    max: float
    count: int


class QuarantinePublic(BaseModel):
    """A quarantined message or batch item."""

    id: int
    received_at: datetime
    topic: str
    reason: str = Field(description="machine-readable reason code")
    detail: str = Field(description="the reason in words")
    item_index: int | None = Field(None, description="index in a gateway batch, when one item was refused")
    payload_size: int
    payload_text: str | None = Field(None, description="payload as text when it is UTF-8 (truncated)")
    payload_base64: str | None = Field(None, description="payload as base64 otherwise (truncated)")
