"""Telemetry rollups: 5-minute and hourly aggregates per (device, metric), and the KPI rollups over them
per (district, device kind, metric), both backends.

TimescaleDB keeps them as continuous aggregates refreshed by its own background jobs (policies from
settings, see :mod:`storage.migrate`); :func:`refresh_rollups` there only forces a refresh (used after
a bulk backfill and where no job scheduler runs). The native PostgreSQL backend keeps plain tables
that :func:`refresh_rollups` recomputes over a window (``ioc history`` over what it wrote) and
:func:`refresh_recent` incrementally: a statement trigger on telemetry notes the 5-minute buckets each
insert touched (late data included) and the ingest workers' maintenance recomputes only those every few
minutes, then records up to where the rollups are complete (``rollup_state``), after which readers use
the raw rows (:mod:`storage.queries`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from storage.db import Backend

logger = logging.getLogger(__name__)

FIVE_MIN, ONE_HOUR = timedelta(minutes=5), timedelta(hours=1)
ROLLUPS = (("telemetry_5m", FIVE_MIN), ("telemetry_1h", ONE_HOUR))
# date_bin's origin: buckets start where TimescaleDB's time_bucket starts them (a Monday, midnight UTC).
_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)

_REFRESH_5M = (
    "INSERT INTO telemetry_5m (bucket, device_id, metric, avg, min, max, n) "
    # held within ±1e100 for the mean (the ingest refuses beyond it): rows stored before that, near float8's
    # limit, made the sum overflow and every refresh of their bucket fail
    "SELECT date_bin('5 minutes', ts, $3), device_id, metric, avg(least(greatest(value, -1e100), 1e100)), "
    "min(value), max(value), count(*) "
    "FROM telemetry WHERE ts >= $1 AND ts < $2 GROUP BY 1, 2, 3 "
    "ON CONFLICT (device_id, metric, bucket) DO UPDATE SET avg = excluded.avg, min = excluded.min, "
    "max = excluded.max, n = excluded.n")
_REFRESH_1H = (
    "INSERT INTO telemetry_1h (bucket, device_id, metric, avg, min, max, n) "
    "SELECT date_bin('1 hour', bucket, $3), device_id, metric, sum(avg * n) / sum(n), min(min), max(max), sum(n) "
    "FROM telemetry_5m WHERE bucket >= $1 AND bucket < $2 GROUP BY 1, 2, 3 "
    "ON CONFLICT (device_id, metric, bucket) DO UPDATE SET avg = excluded.avg, min = excluded.min, "
    "max = excluded.max, n = excluded.n")

# KPI rollups (migration 0011): per (bucket, district, kind, metric) over the per-device rollup of the same
# width, district and kind from the registry as it is now. Deleted and rebuilt per span, so a group that
# no longer has rows (a device moved district) does not linger.
KPI_ROLLUPS = (("kpi_5m", "telemetry_5m"), ("kpi_1h", "telemetry_1h"))
_REFRESH_KPI = (
    "INSERT INTO {kpi} (bucket, district, kind, metric, sum, n, min, max, devices, sum_avg, devices_low) "
    "SELECT r.bucket, coalesce(d.district, ''), d.kind, r.metric, sum(r.avg * r.n), sum(r.n), min(r.min), "
    "max(r.max), count(*), sum(r.avg), count(*) FILTER (WHERE r.min < 0.5) "
    "FROM {per_device} r JOIN devices d USING (device_id) WHERE r.bucket >= $1 AND r.bucket < $2 "
    "GROUP BY 1, 2, 3, 4")


def floor_to(ts: datetime, step: timedelta) -> datetime:
    """Start of the bucket of width ``step`` holding ``ts`` (buckets aligned as TimescaleDB aligns them)."""
    return _ORIGIN + ((ts - _ORIGIN) // step) * step


def _floor(ts: datetime, step: timedelta) -> datetime:
    return _ORIGIN + ((ts - _ORIGIN) // step) * step


async def refresh_rollups(conn: Any, backend: Backend, start: datetime, end: datetime) -> None:
    """Recompute the rollups for every bucket touching ``[start, end)``."""
    if backend is Backend.TIMESCALEDB:
        # CALL cannot run inside a transaction block: the caller must not hold one. Each level after the
        # one it is built on (kpi_5m on telemetry_5m, kpi_1h on telemetry_1h).
        views = [*ROLLUPS, ("kpi_5m", FIVE_MIN), ("kpi_1h", ONE_HOUR)]
        if not await _has_table(conn, "kpi_5m"):
            views = views[:2]  # before migration 0011
        for view, step in views:
            await conn.execute(f"CALL refresh_continuous_aggregate('{view}', $1::timestamptz, $2::timestamptz)",
                               _floor(start, step), _floor(end, step) + step)
        return
    lo5, hi5 = _floor(start, FIVE_MIN), _floor(end, FIVE_MIN) + FIVE_MIN
    async with conn.transaction():
        if await _has_dirty_marks(conn):  # the marks of what this folds in are done with
            await conn.execute("DELETE FROM telemetry_dirty WHERE bucket >= $1 AND bucket < $2", lo5, hi5)
        await _recompute(conn, [(lo5, hi5)])


#: Readings whose time is this close to the refresh may still be in flight: not counted as complete yet.
IN_FLIGHT = timedelta(minutes=1)
_LOCK_KEY = 0x10C_0003


async def refresh_recent(conn: Any, backend: Backend, now: datetime, lookback: timedelta) -> bool:
    """Fallback backend, incremental: recompute only the 5-minute buckets that got rows since the last run
    (marked by a trigger on telemetry, late data included) and the hours around them, then record up to
    where the rollups are complete. Once across all workers (an advisory lock); True when this call did it.
    The first run after the upgrade also recomputes ``lookback`` (rows written before the marks existed).
    TimescaleDB refreshes by its own policies, so nothing is done there."""
    if backend is Backend.TIMESCALEDB:
        return False
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
        return False
    try:
        await _summarize_brin(conn)
        async with conn.transaction():
            claimed_at: datetime = await conn.fetchval("SELECT now()")
            first_run = await conn.fetchval("SELECT NOT EXISTS (SELECT 1 FROM rollup_state WHERE name = 'telemetry')")
            # Only marks committed by now are taken (and their rows are visible to the recompute below);
            # marks committed meanwhile stay for the next run.
            buckets = [r[0] for r in await conn.fetch(
                "WITH gone AS (DELETE FROM telemetry_dirty RETURNING bucket) "
                "SELECT DISTINCT bucket FROM gone ORDER BY 1")]
            spans = _runs(buckets, FIVE_MIN)
            if first_run:
                spans = _merge([*spans, (_floor(now - lookback, FIVE_MIN), _floor(now, FIVE_MIN) + FIVE_MIN)])
            await _recompute(conn, spans)
            await conn.execute(
                "INSERT INTO rollup_state (name, complete_before, refreshed_at) VALUES ('telemetry', $1, $2) "
                "ON CONFLICT (name) DO UPDATE SET complete_before = excluded.complete_before, "
                "refreshed_at = excluded.refreshed_at", _floor(claimed_at - IN_FLIGHT, FIVE_MIN), claimed_at)
        logger.debug("rollups: %d five-minute buckets recomputed in %d spans", len(buckets), len(spans))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return True


async def _summarize_brin(conn: Any) -> None:
    """Summarise the block ranges of telemetry's BRIN time index written since the last run. A range left
    unsummarised is read by every time-range scan (the refresh's own bucket scans, the readers' raw tails,
    the start seed): measured after a province's day, 3-4 s per read. Autovacuum summarises only when it
    vacuums the partition (after a fifth more rows: hours, late in the day); this reads only the new
    ranges' pages. Only the partitions of the last three days (late readings further back are few), and
    never waiting long for one: it takes the lock a running VACUUM holds, and an anti-wraparound VACUUM
    does not give way."""
    if not await _has_table(conn, "telemetry_ts_brin"):
        return  # before migration 0009
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '2s'")
            await conn.execute(
                "SELECT brin_summarize_new_values(i.inhrelid) FROM pg_inherits i "
                "JOIN pg_index x ON x.indexrelid = i.inhrelid JOIN pg_class t ON t.oid = x.indrelid "
                "WHERE i.inhparent = 'telemetry_ts_brin'::regclass "
                "AND t.relname >= 'telemetry_p' || to_char(now() - interval '2 days', 'YYYYMMDD')")
    except asyncpg.LockNotAvailableError:
        logger.info("rollups: BRIN summarisation skipped this time (a VACUUM holds a partition)")


async def complete_before(conn: Any) -> datetime | None:
    """Fallback backend: 5-minute rollups before this are complete (the rest is read from raw rows)."""
    value: datetime | None = await conn.fetchval(
        "SELECT complete_before FROM rollup_state WHERE name = 'telemetry'")
    return value


async def _recompute(conn: Any, spans: list[tuple[datetime, datetime]]) -> None:
    """Recompute 5-minute buckets over ``spans`` (aligned), then the whole hours around them; the KPI
    rollups of both after them."""
    for lo, hi in spans:
        await conn.execute(_REFRESH_5M, lo, hi, _ORIGIN)
    hours = _merge([(_floor(lo, ONE_HOUR), _floor(hi - FIVE_MIN, ONE_HOUR) + ONE_HOUR) for lo, hi in spans])
    for lo, hi in hours:
        await conn.execute(_REFRESH_1H, lo, hi, _ORIGIN)
    if not await _has_table(conn, "kpi_5m"):
        return  # before migration 0011
    for (kpi, _), ranges in zip(KPI_ROLLUPS, (spans, hours), strict=True):
        for lo, hi in ranges:
            await recompute_kpis(conn, kpi, lo, hi)


async def recompute_kpis(conn: Any, kpi: str, lo: datetime, hi: datetime) -> None:
    """Fallback backend: rebuild the KPI rollup ``kpi`` (``kpi_5m`` or ``kpi_1h``) for buckets in ``[lo, hi)``
    from its per-device rollup, with the districts and kinds the registry has now."""
    per_device = dict(KPI_ROLLUPS)[kpi]
    await conn.execute(f"DELETE FROM {kpi} WHERE bucket >= $1 AND bucket < $2", lo, hi)
    await conn.execute(_REFRESH_KPI.format(kpi=kpi, per_device=per_device), lo, hi)


def _runs(buckets: list[datetime], step: timedelta) -> list[tuple[datetime, datetime]]:
    """Sorted bucket starts -> contiguous ``[lo, hi)`` spans."""
    spans: list[tuple[datetime, datetime]] = []
    for b in buckets:
        if spans and spans[-1][1] == b:
            spans[-1] = (spans[-1][0], b + step)
        else:
            spans.append((b, b + step))
    return spans


def _merge(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    out: list[tuple[datetime, datetime]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


async def _has_dirty_marks(conn: Any) -> bool:
    return await _has_table(conn, "telemetry_dirty")


async def _has_table(conn: Any, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


async def prune_rollups(conn: Any, backend: Backend, now: datetime, keep_5m_days: int, keep_1h_days: int) -> int:
    """Fallback backend: drop rollup rows past their retention (TimescaleDB has policies); rows deleted."""
    if backend is Backend.TIMESCALEDB:
        return 0
    deleted = 0
    tables = [("telemetry_5m", keep_5m_days), ("telemetry_1h", keep_1h_days)]
    if await _has_table(conn, "kpi_5m"):
        tables += [("kpi_5m", keep_5m_days), ("kpi_1h", keep_1h_days)]
    for table, days in tables:
        status = await conn.execute(f"DELETE FROM {table} WHERE bucket < $1", now - timedelta(days=days))
        tail = status.rsplit(" ", 1)[-1]
        deleted += int(tail) if tail.isdigit() else 0
    return deleted


_REORDER_STATE = "reorder:telemetry_1h"


async def reorder_hourly(conn: Any, backend: Backend, now: datetime, every_days: float) -> float | None:
    """Fallback backend: rebuild the hourly rollup's key index (``REINDEX CONCURRENTLY``: reads and writes go
    on) when the last rebuild is ``every_days`` old; returns the seconds it took, or None when not due.

    Charts read that index alone (it holds the values: index-only scans). Written an hour at a time for every
    device, its pages split in time order, so a device's 90 days lay on about 180 pages scattered over the
    file: about 250 ms cold, more than the 19,440 rows cost (measured, benchmarks.storage_scale). Rebuilt,
    each device's history is contiguous (a few reads); rows written since the last rebuild are scattered again.
    TimescaleDB compresses its aggregates by device instead (nothing to do there).
    """
    if backend is Backend.TIMESCALEDB:
        return None
    last = await conn.fetchval("SELECT refreshed_at FROM rollup_state WHERE name = $1", _REORDER_STATE)
    if last is None:  # first time: count from now (a new database has little to order)
        await _note_reorder(conn, now)
        return None
    if now - last < timedelta(days=every_days):
        return None
    # A rebuild cut short (a restart) leaves an invalid copy behind, which every write would then maintain.
    for name in await conn.fetch(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'telemetry_1h'::regclass AND NOT i.indisvalid"):
        await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{name[0]}"')
    began = datetime.now(UTC)
    await conn.execute("REINDEX INDEX CONCURRENTLY telemetry_1h_pkey")
    await _note_reorder(conn, now)
    took = (datetime.now(UTC) - began).total_seconds()
    logger.info("hourly rollup index rebuilt in device order in %.1f s", took)
    return took


async def _note_reorder(conn: Any, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO rollup_state (name, complete_before, refreshed_at) VALUES ($1, $2, $2) "
        "ON CONFLICT (name) DO UPDATE SET complete_before = excluded.complete_before, "
        "refreshed_at = excluded.refreshed_at", _REORDER_STATE, at)
