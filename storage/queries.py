"""Read queries used by the API. Backend differences (time_bucket vs date_bin) stay in this module."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from storage.db import Backend

_DEVICE_COLS = "device_id, kind, first_seen, last_seen, lat, lon, district, state, state_reason, state_ts, last_seq"


async def list_devices(conn: Any, kind: str | None = None, state: str | None = None,
                       limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
    """Registered devices, filtered by kind and state, ordered by id."""
    rows = await conn.fetch(
        f"SELECT {_DEVICE_COLS} FROM devices WHERE ($1::text IS NULL OR kind = $1) "
        "AND ($2::text IS NULL OR state = $2) ORDER BY device_id LIMIT $3 OFFSET $4",
        kind, state, limit, offset)
    return [dict(r) for r in rows]


async def get_device(conn: Any, device_id: str) -> dict[str, Any] | None:
    """One device from the registry, or None."""
    row = await conn.fetchrow(f"SELECT {_DEVICE_COLS} FROM devices WHERE device_id = $1", device_id)
    return dict(row) if row else None


async def latest_values(conn: Any, device_id: str, since: datetime) -> list[dict[str, Any]]:
    """The newest value of each metric of a device since ``since``."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (metric) metric, ts, value FROM telemetry "
        "WHERE device_id = $1 AND ts >= $2 ORDER BY metric, ts DESC", device_id, since)
    return [dict(r) for r in rows]


async def raw_points(conn: Any, device_id: str, metric: str | None, start: datetime, end: datetime,
                     limit: int) -> list[dict[str, Any]]:
    """Raw telemetry points in ``[start, end)``, oldest first."""
    rows = await conn.fetch(
        "SELECT ts, metric, value, seq FROM telemetry WHERE device_id = $1 AND ($2::text IS NULL OR metric = $2) "
        "AND ts >= $3 AND ts < $4 ORDER BY ts, metric LIMIT $5", device_id, metric, start, end, limit)
    return [dict(r) for r in rows]


async def bucketed_points(conn: Any, backend: Backend, device_id: str, metric: str | None, start: datetime,
                          end: datetime, bucket: timedelta, limit: int) -> list[dict[str, Any]]:
    """Aggregates per time bucket (avg, min, max, count) in ``[start, end)``."""
    if backend is Backend.TIMESCALEDB:
        bucket_expr = "time_bucket($1::interval, ts)"
    else:  # native PostgreSQL (14+): same alignment as time_bucket's default origin for sub-day buckets
        bucket_expr = "date_bin($1::interval, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')"
    rows = await conn.fetch(
        f"SELECT {bucket_expr} AS bucket, metric, avg(value) AS avg, min(value) AS min, max(value) AS max, "
        "count(*) AS count FROM telemetry WHERE device_id = $2 AND ($3::text IS NULL OR metric = $3) "
        "AND ts >= $4 AND ts < $5 GROUP BY 1, 2 ORDER BY 1, 2 LIMIT $6",
        bucket, device_id, metric, start, end, limit)
    return [dict(r) for r in rows]


async def quarantine(conn: Any, limit: int, reason: str | None = None) -> list[dict[str, Any]]:
    """Most recent quarantined messages, newest first."""
    rows = await conn.fetch(
        "SELECT id, received_at, topic, reason, detail, nullif(item_index, -1) AS item_index, payload, "
        "payload_size FROM quarantine WHERE ($2::text IS NULL OR reason = $2) "
        "ORDER BY received_at DESC, id DESC LIMIT $1", limit, reason)
    return [dict(r) for r in rows]


async def latest_snapshot(conn: Any, device_id: str, at: datetime | None = None) -> dict[str, Any] | None:
    """The most recently seen snapshot of a camera (or the one it showed at ``at``), with its JPEG bytes."""
    if at is None:
        row = await conn.fetchrow(
            "SELECT device_id, first_seen, last_seen, width, height, size, jpeg FROM snapshots "
            "WHERE device_id = $1 ORDER BY last_seen DESC LIMIT 1", device_id)
    else:
        row = await conn.fetchrow(
            "SELECT device_id, first_seen, last_seen, width, height, size, jpeg FROM snapshots "
            "WHERE device_id = $1 AND first_seen <= $2 ORDER BY first_seen DESC LIMIT 1", device_id, at)
    return dict(row) if row else None


async def recent_latest_values(conn: Any, since: datetime) -> list[dict[str, Any]]:
    """Newest value of every (device, metric) seen since ``since`` (seeds the live state at start)."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value FROM telemetry "
        "WHERE ts >= $1 ORDER BY device_id, metric, ts DESC", since)
    return [dict(r) for r in rows]


async def recent_findings(conn: Any, limit: int, device_id: str | None = None,
                          since: datetime | None = None) -> list[dict[str, Any]]:
    """Most recent findings, newest first."""
    rows = await conn.fetch(
        "SELECT id, ts, device_id, series, type, score, explanation, detail FROM findings "
        "WHERE ($2::text IS NULL OR device_id = $2) AND ($3::timestamptz IS NULL OR ts >= $3) "
        "ORDER BY ts DESC, id DESC LIMIT $1", limit, device_id, since)
    return [dict(r) for r in rows]


# --- screens (ioc/api/routes_ui.py) ----------------------------------------------------------------------

async def status_history(conn: Any, device_id: str, start: datetime, end: datetime,
                         limit: int) -> list[dict[str, Any]]:
    """State changes a device reported in ``[start, end)``, oldest first, plus the one in force at ``start``."""
    rows = await conn.fetch(
        "(SELECT ts, state, reason FROM device_status WHERE device_id = $1 AND ts < $2 ORDER BY ts DESC LIMIT 1) "
        "UNION ALL (SELECT ts, state, reason FROM device_status WHERE device_id = $1 AND ts >= $2 AND ts < $3 "
        "ORDER BY ts LIMIT $4) ORDER BY ts", device_id, start, end, limit)
    return [dict(r) for r in rows]


async def device_events(conn: Any, device_id: str, start: datetime, end: datetime,
                        limit: int) -> list[dict[str, Any]]:
    """Device-side alarms in ``[start, end)``, newest first."""
    rows = await conn.fetch(
        "SELECT ts, type, severity, detail FROM device_events WHERE device_id = $1 AND ts >= $2 AND ts < $3 "
        "ORDER BY ts DESC LIMIT $4", device_id, start, end, limit)
    return [dict(r) for r in rows]


async def kpi_history(conn: Any, backend: Backend, start: datetime, end: datetime,
                      bucket: timedelta) -> list[dict[str, Any]]:
    """City-wide figures per time bucket for the wall's sparklines.

    ``speed``: mean ``speed_kmh`` of traffic sensors; ``bts_reporting`` / ``cam_reporting``: devices of
    that kind that sent a reading in the bucket (``availability_pct`` / ``fps`` mark the kind, as the
    device API defines them); ``bts_total`` / ``cam_total``: devices of that kind registered.
    """
    if backend is Backend.TIMESCALEDB:
        bucket_expr = "time_bucket($1::interval, ts)"
    else:
        bucket_expr = "date_bin($1::interval, ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')"
    rows = await conn.fetch(
        f"SELECT {bucket_expr} AS bucket, avg(value) FILTER (WHERE metric = 'speed_kmh') AS speed, "
        "count(DISTINCT device_id) FILTER (WHERE metric = 'availability_pct') AS bts_reporting, "
        "count(DISTINCT device_id) FILTER (WHERE metric = 'fps') AS cam_reporting "
        "FROM telemetry WHERE ts >= $2 AND ts < $3 AND metric IN ('speed_kmh', 'availability_pct', 'fps') "
        "GROUP BY 1 ORDER BY 1", bucket, start, end)
    totals = dict(await conn.fetch("SELECT kind, count(*) FROM devices GROUP BY kind"))
    return [{**dict(r), "bts_total": totals.get("bts", 0), "cam_total": totals.get("camera", 0)} for r in rows]


async def incident_spans(conn: Any, start: datetime, end: datetime, limit: int = 10_000) -> list[dict[str, Any]]:
    """When incidents overlapping ``[start, end)`` were live (opened, resolved or closed, and severity)."""
    rows = await conn.fetch(
        "SELECT started_at, coalesce(resolved_at, closed_at) AS ended_at, severity FROM incidents "
        "WHERE started_at < $2 AND coalesce(resolved_at, closed_at, 'infinity') >= $1 "
        "ORDER BY started_at DESC LIMIT $3", start, end, limit)
    return [dict(r) for r in rows]
