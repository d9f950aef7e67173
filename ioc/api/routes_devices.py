"""Devices, telemetry and quarantine."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import TypeAdapter

from ioc.api.deps import BackendDep, PoolDep, Role, requires
from ioc.api.heavy import heavy_slot, json_model, json_rows
from ioc.api.models import ApiTime, DeviceDetail, DevicePublic, QuarantinePublic, TelemetryBucket, TelemetryPoint
from storage import queries
from storage.config import StorageConfig

router = APIRouter(prefix="/api", tags=["devices"])

_BUCKET_RE = re.compile(r"(\d{1,6})\s*(s|sec|m|min|h|hour|d|day)s?")
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}
_MAX_BUCKETS = 20_000
_DEVICES: TypeAdapter[list[DevicePublic]] = TypeAdapter(list[DevicePublic])
_QUARANTINE: TypeAdapter[list[QuarantinePublic]] = TypeAdapter(list[QuarantinePublic])


def parse_bucket(text: str) -> timedelta:
    """Parse a bucket width such as ``30s``, ``5m``, ``1h``, ``1d``; raise 422 otherwise."""
    match = _BUCKET_RE.fullmatch(text.strip().lower())
    if not match or int(match[1]) == 0:
        raise HTTPException(422, f"bucket {text!r} must look like 30s, 5m, 1h or 1d")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


@router.get("/devices", response_model=list[DevicePublic], dependencies=[requires(Role.VIEWER)])
async def list_devices(request: Request, pool: PoolDep,
                       kind: Annotated[str | None, Query(pattern="^(camera|bts|traffic)$")] = None,
                       state: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
                       offset: Annotated[int, Query(ge=0)] = 0) -> Response:
    """Devices known to the registry (they appear on their first message)."""
    async with heavy_slot(request, limit):  # large answers a few at a time, built off the event loop
        async with pool.acquire() as conn:
            rows = await queries.list_devices(conn, kind, state, limit, offset)
        return await json_model(rows, _DEVICES)


@router.get("/devices/{device_id}", response_model=DeviceDetail, dependencies=[requires(Role.VIEWER)])
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


_PAGE_HEADERS = {
    "X-Truncated": {"description": "`true` when the limit cut the answer: more rows follow (see Link)",
                    "schema": {"type": "string", "enum": ["true"]}},
    "Link": {"description": "`<url>; rel=\"next\"`: the same query from where this answer stopped",
             "schema": {"type": "string"}},
    "X-Next-Cursor": {"description": "the `cursor` value of the next page", "schema": {"type": "string"}},
    "X-Telemetry-Source": {"description": "where buckets were read from: raw, 5m or 1h (rollups)",
                           "schema": {"type": "string", "enum": ["raw", "5m", "1h"]}},
}


@router.get("/telemetry", dependencies=[requires(Role.VIEWER)],
            response_model=list[TelemetryPoint] | list[TelemetryBucket], responses={200: {"headers": _PAGE_HEADERS},
                       422: {"description": "bad parameters, or a range reaching past what is kept"}})
async def telemetry(request: Request, pool: PoolDep, backend: BackendDep, device_id: str,
                    metric: str | None = None, start: ApiTime | None = None, end: ApiTime | None = None,
                    bucket: Annotated[str | None, Query(description="e.g. 1m, 5m, 1h: aggregate per bucket")] = None,
                    limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
                    cursor: Annotated[str | None, Query(max_length=200, description=(
                        "continue a truncated answer: the X-Next-Cursor value (the Link header has the URL)"))]
                    = None) -> Response:
    """Raw points of a device (one metric or all) in ``[start, end)``; with ``bucket``, aggregates.

    Buckets of whole hours are read from the hourly rollup, of whole 5 minutes from the 5-minute rollup
    (start and end then taken to whole rollup buckets), others from the raw rows; a range that starts
    before the chosen store keeps data is refused (422) with the bucket that would serve it. An answer cut
    by ``limit`` says so: ``X-Truncated: true`` and a ``Link: <...>; rel="next"`` to the rest. Answers of more
    than 1,000 rows (``limit``) are read and built a few at a time (``ioc/api/heavy.py``): past what may wait,
    429 (the caller has 8 in progress) or 503, with ``Retry-After``.
    """
    end = _aware(end) if end else datetime.now(UTC)
    start = _aware(start) if start else end - timedelta(hours=1)
    if start >= end:
        raise HTTPException(422, "start must be before end")
    after = _decode_cursor(cursor) if cursor else None
    config: StorageConfig = getattr(request.app.state, "storage", None) or StorageConfig()
    width = parse_bucket(bucket) if bucket is not None else None
    if width is not None and (end - start) / width > _MAX_BUCKETS:
        raise HTTPException(422, f"{bucket} buckets over this range exceed {_MAX_BUCKETS}; widen the bucket")
    source = queries.source_for(width) if width is not None else queries.Source.RAW
    _check_kept(source, start, config, bucket)
    headers = {"X-Telemetry-Source": source.value} if width is not None else {}
    async with heavy_slot(request, limit):
        async with pool.acquire() as conn:
            if width is None:
                rows = await queries.raw_points(conn, device_id, metric, start, end, limit + 1, after)
                key = "ts"
            else:
                rows = await queries.bucketed_points(conn, backend, device_id, metric, start, end, width, limit + 1,
                                                     source, after)
                key = "bucket"
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_cursor = _encode_cursor(last[key], last["metric"])
            headers["X-Truncated"] = "true"
            headers["X-Next-Cursor"] = next_cursor
            headers["Link"] = f'<{request.url.include_query_params(cursor=next_cursor)}>; rel="next"'
        return await json_rows(rows, headers)


def _check_kept(source: queries.Source, start: datetime, config: StorageConfig, bucket: str | None) -> None:
    """422 when ``[start, ...)`` reaches further back than ``source`` keeps data."""
    days = queries.kept_days(source, config)
    if start >= datetime.now(UTC) - timedelta(days=days):
        return
    what = {queries.Source.RAW: "raw readings", queries.Source.ROLLUP_5M: "5-minute rollups",
            queries.Source.ROLLUP_1H: "hourly rollups"}[source]
    asked = f"bucket={bucket}" if bucket else "raw readings (no bucket)"
    hint = [f"a bucket of whole 5 minutes reaches {config.rollup_5m_retention_days} days back"
            if source is queries.Source.RAW else "",
            f"a bucket of whole hours reaches {config.rollup_1h_retention_days} days back"
            if source is not queries.Source.ROLLUP_1H else ""]
    raise HTTPException(422, f"{asked}: {what} are kept {days} days and this range starts "
                             f"{(datetime.now(UTC) - start).days} days ago; "
                             + ("; ".join(h for h in hint if h) or "nothing older is kept"))


def _encode_cursor(ts: datetime, metric: str) -> str:
    return base64.urlsafe_b64encode(f"{ts.isoformat()}|{metric}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, metric = text.split("|", 1)
        return _aware(datetime.fromisoformat(stamp)), metric
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(422, "cursor is not one this API gave out") from None


@router.get("/quarantine", response_model=list[QuarantinePublic], dependencies=[requires(Role.SUPERVISOR)])
async def quarantine(request: Request, pool: PoolDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                     reason: str | None = None) -> Response:
    """Most recent quarantined messages with the reason in words (payloads truncated)."""
    async with heavy_slot(request, limit):  # with IOC_AUTH__HEAVY_LARGE_ROWS under 1,000, a few at a time
        async with pool.acquire() as conn:
            rows = await queries.quarantine(conn, limit, reason)
        for row in rows:
            payload: bytes = row.pop("payload")
            try:
                row["payload_text"] = payload.decode("utf-8")
            except UnicodeDecodeError:
                row["payload_base64"] = base64.b64encode(payload).decode()
        return await json_model(rows, _QUARANTINE)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
