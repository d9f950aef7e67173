"""Response models of the REST API (``XPublic`` naming)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

#: The times a request may carry (query or body). Near year 1 or 9999 a time overflows once moved to UTC or
#: shifted by a default window, and asyncpg stores exactly 0001-01-01 / 9999-12-31T23:59:59.999999 as -infinity /
#: infinity, read back without a zone: a silence holding one made the alert engine raise on every tick.
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9000, 1, 1, tzinfo=UTC)


def _api_time(value: datetime) -> datetime:
    """A request's time in UTC (no offset: UTC), within [TIME_MIN, TIME_MAX)."""
    try:
        ts = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time is out of range") from None
    if not TIME_MIN <= ts < TIME_MAX:
        raise ValueError(f"time must be from {TIME_MIN.date()} to before {TIME_MAX.date()}")
    return ts


#: Every time a request carries: validated, aware, in UTC.
ApiTime = Annotated[datetime, AfterValidator(_api_time)]


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
