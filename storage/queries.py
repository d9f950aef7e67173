"""Read queries used by the API. Backend differences (time_bucket vs date_bin) stay in this module."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from storage.config import StorageConfig
from storage.db import Backend
from storage.rollups import complete_before, floor_to

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
    """The newest value of each metric of a device since ``since`` (kept by the write path)."""
    rows = await conn.fetch(
        "SELECT metric, ts, value FROM telemetry_latest WHERE device_id = $1 AND ts >= $2 ORDER BY metric",
        device_id, since)
    return [dict(r) for r in rows]


async def raw_points(conn: Any, device_id: str, metric: str | None, start: datetime, end: datetime,
                     limit: int, after: tuple[datetime, str] | None = None) -> list[dict[str, Any]]:
    """Raw telemetry points in ``[start, end)``, oldest first (by time, then metric); with ``after``, only
    the points past that (ts, metric): keyset paging, since (device, metric, ts) is unique."""
    after_ts, after_metric = after if after else (None, None)
    rows = await conn.fetch(
        "SELECT ts, metric, value, seq FROM telemetry WHERE device_id = $1 AND ($2::text IS NULL OR metric = $2) "
        "AND ts >= $3 AND ts < $4 AND ($6::timestamptz IS NULL OR (ts, metric) > ($6, $7::text)) "
        "ORDER BY ts, metric LIMIT $5", device_id, metric, start, end, limit, after_ts, after_metric)
    return [dict(r) for r in rows]


class Source(StrEnum):
    """Where bucketed telemetry is read from."""

    RAW = "raw"
    ROLLUP_5M = "5m"
    ROLLUP_1H = "1h"


_STEP = {Source.ROLLUP_5M: timedelta(minutes=5), Source.ROLLUP_1H: timedelta(hours=1)}
_FIVE_MIN = "'5 minutes'"
_TABLE = {Source.ROLLUP_5M: "telemetry_5m", Source.ROLLUP_1H: "telemetry_1h"}


def source_for(bucket: timedelta) -> Source:
    """The coarsest store a bucket can be built from: the hourly rollup when it is whole hours, the
    5-minute one when whole 5 minutes, else the raw rows. (Rollup buckets are aligned as bucket widths
    are, so a wider bucket is always a union of whole rollup buckets.)"""
    for source in (Source.ROLLUP_1H, Source.ROLLUP_5M):
        if bucket % _STEP[source] == timedelta(0):
            return source
    return Source.RAW


def kept_days(source: Source, config: StorageConfig) -> int:
    """How many days back ``source`` holds data (retention settings)."""
    return {Source.RAW: config.retention_days, Source.ROLLUP_5M: config.rollup_5m_retention_days,
            Source.ROLLUP_1H: config.rollup_1h_retention_days}[source]


def _bucket_expr(backend: Backend, column: str, param: str) -> str:
    if backend is Backend.TIMESCALEDB:
        return f"time_bucket({param}::interval, {column})"
    # native PostgreSQL (14+): same alignment as time_bucket's default origin for sub-day buckets
    return f"date_bin({param}::interval, {column}, TIMESTAMPTZ '2000-01-03 00:00:00+00')"


async def bucketed_points(conn: Any, backend: Backend, device_id: str, metric: str | None, start: datetime,
                          end: datetime, bucket: timedelta, limit: int, source: Source | None = None,
                          after: tuple[datetime, str] | None = None) -> list[dict[str, Any]]:
    """Aggregates per time bucket (avg, min, max, count) in ``[start, end)``, oldest first (by bucket, then
    metric); with ``after``, only those past that (bucket, metric): keyset paging.

    Read from the coarsest store the bucket allows (:func:`source_for`) unless ``source`` says which. From
    a rollup, ``start`` and ``end`` are taken to whole rollup buckets (5 min or 1 h). On the PostgreSQL
    fallback the rollup tables are used up to where they are complete and the raw rows after it.
    """
    source = source or source_for(bucket)
    after_ts, after_metric = after if after else (None, None)
    if after_ts is not None:
        start = max(start, after_ts)  # buckets start there: whole ones
    args: list[Any] = [bucket, device_id, metric, start, end, limit, after_ts, after_metric]
    if source is Source.RAW:
        inner = (f"SELECT {_bucket_expr(backend, 'ts', '$1')} AS bucket, metric, avg(value) AS avg, "
                 "min(value) AS min, max(value) AS max, count(*) AS count FROM telemetry WHERE device_id = $2 "
                 "AND ($3::text IS NULL OR metric = $3) AND ts >= $4 AND ts < $5 GROUP BY 1, 2")
    else:
        args[3] = floor_to(start, _STEP[source])
        rollup = (f"SELECT bucket, metric, avg, min, max, n FROM {_TABLE[source]} WHERE device_id = $2 "
                  "AND ($3::text IS NULL OR metric = $3) AND bucket >= $4 AND bucket < $5")
        if backend is Backend.POSTGRES:  # complete rollups, then the raw rows past them
            rollup = (f"{rollup} AND bucket < $9 UNION ALL "
                      f"SELECT {_bucket_expr(backend, 'ts', _FIVE_MIN)}, metric, avg(value), "
                      "min(value), max(value), count(*) FROM telemetry WHERE device_id = $2 "
                      "AND ($3::text IS NULL OR metric = $3) AND ts >= greatest($4, $9) AND ts < $5 GROUP BY 1, 2")
            done = await complete_before(conn)
            args.append(floor_to(done, _STEP[source]) if done else datetime(1970, 1, 1, tzinfo=UTC))
        inner = (f"SELECT {_bucket_expr(backend, 'bucket', '$1')} AS bucket, metric, sum(avg * n) / sum(n) AS avg, "
                 f"min(min) AS min, max(max) AS max, sum(n)::bigint AS count FROM ({rollup}) src GROUP BY 1, 2")
    async with _custom_plan(conn):
        rows = await conn.fetch(
            f"SELECT * FROM ({inner}) q WHERE ($7::timestamptz IS NULL OR (bucket, metric) > ($7, $8::text)) "
            "ORDER BY bucket, metric LIMIT $6", *args)
    return [dict(r) for r in rows]


@contextlib.asynccontextmanager
async def _custom_plan(conn: Any) -> AsyncIterator[None]:
    """Plan this statement for its parameters. After five runs PostgreSQL may switch a prepared statement
    to a generic plan, which cannot see that one device over a year is a few thousand rows and scans the
    time index of the whole rollup table instead (measured: 200 ms instead of 3 ms)."""
    async with conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        yield


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
    """Newest value of every (device, metric) seen since ``since`` (seeds the live state at start).

    Read from ``telemetry_latest``, which the write path keeps: a province's last 15 minutes are 570,000
    readings to sort (p95 479 ms in benchmarks.storage_scale), their latest values about 40,000 rows."""
    rows = await conn.fetch(
        "SELECT device_id, metric, ts, value FROM telemetry_latest WHERE ts >= $1 ORDER BY device_id, metric",
        since)
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


#: The series behind the city KPIs, by the registry's kind: traffic speed, BTS and cameras reporting.
_KPI_PAIRS = "('traffic', 'speed_kmh'), ('bts', 'availability_pct'), ('camera', 'fps')"
_KPI_SERIES = f"(kind, metric) IN ({_KPI_PAIRS})"


async def kpi_history(conn: Any, backend: Backend, start: datetime, end: datetime,
                      bucket: timedelta) -> list[dict[str, Any]]:
    """City-wide figures per time bucket for the wall's sparklines.

    ``speed``: mean ``speed_kmh`` of traffic sensors; ``bts_reporting`` / ``cam_reporting``: BTS that sent
    ``availability_pct`` / cameras that sent ``fps`` in the bucket; ``bts_total`` / ``cam_total``: devices of
    that kind registered (kinds are the registry's). Buckets of whole 5 minutes are read from the KPI rollup
    ``kpi_5m`` (a row per district and 5 minutes; a province's 5-minute per-device rollup has 60 times more,
    its raw rows 3,000 times more), and a wider bucket counts the most devices that reported in one of its
    5 minutes (the distinct count whenever every device reports at least every 5 minutes, as the province's
    cadence has them do). Other widths count distinct devices in the raw rows.
    """
    figures = ("SELECT {b} AS bucket, sum(s) FILTER (WHERE metric = 'speed_kmh') / "
               "sum(n) FILTER (WHERE metric = 'speed_kmh') AS speed, "
               "coalesce({agg}(devices) FILTER (WHERE metric = 'availability_pct'), 0) AS bts_reporting, "
               "coalesce({agg}(devices) FILTER (WHERE metric = 'fps'), 0) AS cam_reporting "
               "FROM ({src}) src GROUP BY 1 ORDER BY 1")
    if source_for(bucket) is Source.RAW:
        # per (bucket, device, metric) first, then add those rows up: hash aggregates, where count(DISTINCT) sorts
        src = (f"SELECT {_bucket_expr(backend, 'ts', '$1')} AS t, device_id, metric, sum(value) AS s, "
               "count(*) AS n, 1 AS devices FROM telemetry JOIN devices USING (device_id) "
               f"WHERE ts >= $2 AND ts < $3 AND {_KPI_SERIES} GROUP BY 1, 2, 3")
        rows = await conn.fetch(figures.format(b="t", agg="sum", src=src), bucket, start, end)
    else:
        src = (f"SELECT bucket AS t, metric, sum, n, devices FROM kpi_5m WHERE bucket >= $2 AND bucket < $3 "
               f"AND {_KPI_SERIES}")
        args: list[Any] = [bucket, floor_to(start, _STEP[Source.ROLLUP_5M]), end]
        if backend is Backend.POSTGRES:  # complete rollups, then the raw rows past them (a few minutes)
            done = await complete_before(conn)
            args.append(done or datetime(1970, 1, 1, tzinfo=UTC))
            # The tail is always newer than the last ANALYZE, so the planner expects no rows there and loops over
            # the devices through the key index: each probe must name the metric, or it reads the device's whole
            # day (1.8 s after a province's day).
            src = (f"{src} AND bucket < $4 UNION ALL SELECT {_bucket_expr(backend, 't.ts', _FIVE_MIN)}, t.metric, "
                   "sum(t.value), count(*), count(DISTINCT t.device_id) FROM devices d "
                   f"JOIN (VALUES {_KPI_PAIRS}) k (kind, metric) ON k.kind = d.kind "
                   "JOIN telemetry t ON t.device_id = d.device_id AND t.metric = k.metric "
                   "AND t.ts >= greatest($2, $4) AND t.ts < $3 GROUP BY 1, 2")
        # the city per 5 minutes (over its districts), then per bucket
        src = (f"SELECT t, metric, sum(sum) AS s, sum(n) AS n, sum(devices)::bigint AS devices FROM ({src}) k "
               "GROUP BY 1, 2")
        async with _custom_plan(conn):
            # The tail needs 3 of the ~8 metrics a device sends: probing the key index per (device, metric) reads
            # those alone (31,000 rows for a province's 6 minutes). Early in a day, with a young partition,
            # the planner preferred reading the tail's blocks whole (229,000 rows, or the partition: 250 ms).
            await conn.execute("SET LOCAL enable_seqscan = off")
            await conn.execute("SET LOCAL enable_bitmapscan = off")
            rows = await conn.fetch(figures.format(b=_bucket_expr(backend, "t", "$1"), agg="max", src=src), *args)
    totals = dict(await conn.fetch("SELECT kind, count(*) FROM devices GROUP BY kind"))
    return [{**dict(r), "bts_total": totals.get("bts", 0), "cam_total": totals.get("camera", 0)} for r in rows]


async def incident_spans(conn: Any, start: datetime, end: datetime, limit: int = 10_000) -> list[dict[str, Any]]:
    """When incidents overlapping ``[start, end)`` were live (opened, resolved or closed, and severity)."""
    rows = await conn.fetch(
        "SELECT started_at, coalesce(resolved_at, closed_at) AS ended_at, severity FROM incidents "
        "WHERE started_at < $2 AND coalesce(resolved_at, closed_at, 'infinity') >= $1 "
        "ORDER BY started_at DESC LIMIT $3", start, end, limit)
    return [dict(r) for r in rows]
