"""Devices, telemetry and quarantine."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from ioc.api.deps import BackendDep, PoolDep
from ioc.api.models import DeviceDetail, DevicePublic, QuarantinePublic, TelemetryBucket, TelemetryPoint
from storage import queries

router = APIRouter(prefix="/api", tags=["devices"])

_BUCKET_RE = re.compile(r"(\d{1,6})\s*(s|sec|m|min|h|hour|d|day)s?")
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
_MAX_BUCKETS = 20_000


def parse_bucket(text: str) -> timedelta:
    """Parse a bucket width such as ``30s``, ``5m``, ``1h``, ``1d``; raise 422 otherwise."""
    match = _BUCKET_RE.fullmatch(text.strip().lower())
    if not match or int(match[1]) == 0:
        raise HTTPException(422, f"bucket {text!r} must look like 30s, 5m, 1h or 1d")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


@router.get("/devices", response_model=list[DevicePublic])
async def list_devices(pool: PoolDep, kind: Annotated[str | None, Query(pattern="^(camera|bts|traffic)$")] = None,
                       state: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                       offset: Annotated[int, Query(ge=0)] = 0) -> list[dict[str, object]]:
    """Devices known to the registry (they appear on their first message)."""
    async with pool.acquire() as conn:
        return await queries.list_devices(conn, kind, state, limit, offset)


@router.get("/devices/{device_id}", response_model=DeviceDetail)
async def get_device(pool: PoolDep, device_id: str,
                     latest_within_h: Annotated[int, Query(ge=1, le=24 * 90)] = 168) -> dict[str, object]:
    """One device with the newest value of each metric seen within ``latest_within_h`` hours."""
    async with pool.acquire() as conn:
        device = await queries.get_device(conn, device_id)
        if device is None:
            raise HTTPException(404, f"no device {device_id!r}")
        since = datetime.now(UTC) - timedelta(hours=latest_within_h)
        device["latest"] = await queries.latest_values(conn, device_id, since)
    return device


@router.get("/telemetry", response_model=list[TelemetryPoint] | list[TelemetryBucket])
async def telemetry(pool: PoolDep, backend: BackendDep, device_id: str, metric: str | None = None,
                    start: datetime | None = None, end: datetime | None = None,
                    bucket: Annotated[str | None, Query(description="e.g. 1m, 5m, 1h: aggregate per bucket")] = None,
                    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000) -> list[dict[str, object]]:
    """Raw points of a device (one metric or all) in ``[start, end)``; with ``bucket``, aggregates."""
    end = _aware(end) if end else datetime.now(UTC)
    start = _aware(start) if start else end - timedelta(hours=1)
    if start >= end:
        raise HTTPException(422, "start must be before end")
    async with pool.acquire() as conn:
        if bucket is None:
            return await queries.raw_points(conn, device_id, metric, start, end, limit)
        width = parse_bucket(bucket)
        if (end - start) / width > _MAX_BUCKETS:
            raise HTTPException(422, f"{bucket} buckets over this range exceed {_MAX_BUCKETS}; widen the bucket")
        return await queries.bucketed_points(conn, backend, device_id, metric, start, end, width, limit)


@router.get("/quarantine", response_model=list[QuarantinePublic])
async def quarantine(pool: PoolDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     reason: str | None = None) -> list[dict[str, object]]:
    """Most recent quarantined messages with the reason in words."""
    async with pool.acquire() as conn:
        rows = await queries.quarantine(conn, limit, reason)
    for row in rows:
        payload: bytes = row.pop("payload")
        try:
            row["payload_text"] = payload.decode("utf-8")
        except UnicodeDecodeError:
            row["payload_base64"] = base64.b64encode(payload).decode()
    return rows


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
