"""Housekeeping run by ``ioc db upgrade`` and periodically by ingest workers (never on the insert path).

Fallback backend: create daily partitions ahead, move strays out of DEFAULT partitions, drop partitions
and rollup rows past retention, rebuild the hourly rollup's index in device order weekly. Both backends:
keep a bounded snapshot history per camera, prune old quarantine and findings, and forget devices silent
past the retention (their latest values and learned state).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

from storage.config import StorageConfig
from storage.db import Backend
from storage.rollups import prune_rollups, reorder_hourly

logger = logging.getLogger(__name__)

PARTITIONED_TABLES = ("telemetry", "device_status", "device_events")
_LOCK_KEY = 0x10C_0002


def partition_name(table: str, day: date) -> str:
    """Name of ``table``'s partition for ``day``, e.g. ``telemetry_p20261122``."""
    return f"{table}_p{day:%Y%m%d}"


async def run_maintenance(conn: Any, backend: Backend, config: StorageConfig,
                          now: datetime | None = None) -> dict[str, int]:
    """Do all housekeeping once; safe to call concurrently from several workers (advisory lock)."""
    now = now or datetime.now(UTC)
    stats = {"partitions_created": 0, "partitions_dropped": 0, "snapshots_pruned": 0, "quarantine_pruned": 0,
             "findings_pruned": 0, "rollups_pruned": 0, "latest_pruned": 0, "series_state_pruned": 0,
             "rollup_index_rebuilt": 0}
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
        return stats  # another worker is at it
    try:
        if backend is Backend.POSTGRES:
            stats["partitions_created"] = await ensure_partitions(conn, now.date(), config.partitions_ahead_days)
            stats["partitions_dropped"] = await drop_expired_partitions(conn, now.date(), config.retention_days)
        stats["snapshots_pruned"] = await prune_snapshots(conn, config.snapshot_history)
        stats["quarantine_pruned"] = _count(await conn.execute(
            "DELETE FROM quarantine WHERE received_at < $1",
            now - timedelta(days=config.quarantine_retention_days)))
        stats["findings_pruned"] = _count(await conn.execute(
            "DELETE FROM findings WHERE ts < $1", now - timedelta(days=config.retention_days)))
        # A device silent past the retention has no readings left to chart: its latest values and learned
        # state go too (a leader writing a device that has just come back keeps the row: the DELETE re-checks
        # the updated row). Learned state is relearned from scratch if it ever reports again.
        expired = now - timedelta(days=config.retention_days)
        stats["latest_pruned"] = _count(await conn.execute("DELETE FROM telemetry_latest WHERE ts < $1", expired))
        stats["series_state_pruned"] = _count(await conn.execute(
            "DELETE FROM series_state WHERE updated_at < $1", expired))
        stats["rollups_pruned"] = await prune_rollups(conn, backend, now, config.rollup_5m_retention_days,
                                                      config.rollup_1h_retention_days)
        stats["rollup_index_rebuilt"] = int(await reorder_hourly(conn, backend, now, config.rollup_reorder_days)
                                            is not None)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    if any(stats.values()):
        logger.info("maintenance: %s", stats)
    return stats


async def ensure_partitions(conn: Any, today: date, ahead_days: int, behind_days: int = 1) -> int:
    """Create daily partitions from ``today - behind_days`` to ``today + ahead_days``; return how many."""
    created = 0
    existing = await _partitions(conn)
    for table in PARTITIONED_TABLES:
        for offset in range(-behind_days, ahead_days + 1):
            day = today + timedelta(days=offset)
            name = partition_name(table, day)
            if name in existing:
                continue
            await _create_partition(conn, table, name, day)
            created += 1
    return created


async def _create_partition(conn: Any, table: str, name: str, day: date) -> None:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    bounds = f"FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
    default = f"{table}_default"
    async with conn.transaction():
        # Rows that landed in DEFAULT for this day must move first, or PostgreSQL refuses the partition.
        await conn.execute(f"CREATE TEMP TABLE _strays ON COMMIT DROP AS "
                           f"WITH gone AS (DELETE FROM {default} WHERE ts >= $1 AND ts < $2 RETURNING *) "
                           f"SELECT * FROM gone", start, end)
        await conn.execute(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES {bounds}")
        await conn.execute(f"INSERT INTO {table} SELECT * FROM _strays")
    logger.debug("created partition %s", name)


async def drop_expired_partitions(conn: Any, today: date, retention_days: int) -> int:
    """Drop daily partitions wholly older than the retention window; return how many."""
    cutoff = today - timedelta(days=retention_days)
    dropped = 0
    for name in sorted(await _partitions(conn)):
        table, _, stamp = name.rpartition("_p")
        if table not in PARTITIONED_TABLES or not stamp.isdigit():
            continue
        if datetime.strptime(stamp, "%Y%m%d").date() < cutoff:
            await conn.execute(f"DROP TABLE {name}")
            dropped += 1
            logger.info("dropped expired partition %s", name)
    return dropped


async def prune_snapshots(conn: Any, keep: int) -> int:
    """Keep only the ``keep`` most recently seen distinct snapshots per camera."""
    return _count(await conn.execute(
        "DELETE FROM snapshots s USING ("
        "  SELECT device_id, sha256, row_number() OVER (PARTITION BY device_id ORDER BY last_seen DESC) AS rn"
        "  FROM snapshots) r "
        "WHERE s.device_id = r.device_id AND s.sha256 = r.sha256 AND r.rn > $1", keep))


async def _partitions(conn: Any) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = ANY($1::text[])", list(PARTITIONED_TABLES))
    return {r["relname"] for r in rows}


def _count(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
