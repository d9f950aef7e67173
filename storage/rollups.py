"""Telemetry rollups: 5-minute and hourly aggregates per (device, metric), both backends.

TimescaleDB keeps them as continuous aggregates refreshed by its own background jobs (policies from
settings, see :mod:`storage.migrate`); :func:`refresh_rollups` there only forces a refresh (used after
a bulk backfill and where no job scheduler runs). The native PostgreSQL backend keeps plain tables
that :func:`refresh_rollups` recomputes over a window: the ingest workers' maintenance does so every
few minutes over a look-back (late data within it is folded in), ``ioc history`` over what it wrote.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from storage.db import Backend

logger = logging.getLogger(__name__)

ROLLUPS = (("telemetry_5m", timedelta(minutes=5)), ("telemetry_1h", timedelta(hours=1)))
# date_bin's origin: buckets start where TimescaleDB's time_bucket starts them (a Monday, midnight UTC).
_ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)

_REFRESH_5M = (
    "INSERT INTO telemetry_5m (bucket, device_id, metric, avg, min, max, n) "
    "SELECT date_bin('5 minutes', ts, $3), device_id, metric, avg(value), min(value), max(value), count(*) "
    "FROM telemetry WHERE ts >= $1 AND ts < $2 GROUP BY 1, 2, 3 "
    "ON CONFLICT (device_id, metric, bucket) DO UPDATE SET avg = excluded.avg, min = excluded.min, "
    "max = excluded.max, n = excluded.n")
_REFRESH_1H = (
    "INSERT INTO telemetry_1h (bucket, device_id, metric, avg, min, max, n) "
    "SELECT date_bin('1 hour', bucket, $3), device_id, metric, sum(avg * n) / sum(n), min(min), max(max), sum(n) "
    "FROM telemetry_5m WHERE bucket >= $1 AND bucket < $2 GROUP BY 1, 2, 3 "
    "ON CONFLICT (device_id, metric, bucket) DO UPDATE SET avg = excluded.avg, min = excluded.min, "
    "max = excluded.max, n = excluded.n")


def _floor(ts: datetime, step: timedelta) -> datetime:
    return _ORIGIN + ((ts - _ORIGIN) // step) * step


async def refresh_rollups(conn: Any, backend: Backend, start: datetime, end: datetime) -> None:
    """Recompute the rollups for every bucket touching ``[start, end)``."""
    if backend is Backend.TIMESCALEDB:
        # CALL cannot run inside a transaction block: the caller must not hold one.
        for view, step in ROLLUPS:
            await conn.execute(f"CALL refresh_continuous_aggregate('{view}', $1::timestamptz, $2::timestamptz)",
                               _floor(start, step), _floor(end, step) + step)
        return
    lo5, hi5 = _floor(start, timedelta(minutes=5)), _floor(end, timedelta(minutes=5)) + timedelta(minutes=5)
    lo1, hi1 = _floor(start, timedelta(hours=1)), _floor(end, timedelta(hours=1)) + timedelta(hours=1)
    async with conn.transaction():
        await conn.execute(_REFRESH_5M, lo5, hi5, _ORIGIN)
        # the hours around the refreshed 5-minute buckets, whole
        await conn.execute(_REFRESH_1H, lo1, hi1, _ORIGIN)


_LOCK_KEY = 0x10C_0003


async def refresh_recent(conn: Any, backend: Backend, now: datetime, lookback: timedelta) -> bool:
    """Fallback backend: refresh the last ``lookback`` once across all workers (an advisory lock); True
    when this call did it. TimescaleDB refreshes by its own policies, so nothing is done there."""
    if backend is Backend.TIMESCALEDB:
        return False
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
        return False
    try:
        await refresh_rollups(conn, backend, now - lookback, now)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return True


async def prune_rollups(conn: Any, backend: Backend, now: datetime, keep_5m_days: int, keep_1h_days: int) -> int:
    """Fallback backend: drop rollup rows past their retention (TimescaleDB has policies); rows deleted."""
    if backend is Backend.TIMESCALEDB:
        return 0
    deleted = 0
    for table, days in (("telemetry_5m", keep_5m_days), ("telemetry_1h", keep_1h_days)):
        status = await conn.execute(f"DELETE FROM {table} WHERE bucket < $1", now - timedelta(days=days))
        tail = status.rsplit(" ", 1)[-1]
        deleted += int(tail) if tail.isdigit() else 0
    return deleted
