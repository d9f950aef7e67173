"""Connections: one pool factory shared by ingest and the API, and backend detection."""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

import asyncpg

from storage.config import StorageConfig

logger = logging.getLogger(__name__)

#: Per-connection staging table for the COPY write path; temporary, so it costs no schema change.
STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS telemetry_stage "
    "(ts timestamptz, device_id text, metric text, value double precision, seq bigint) "
    "ON COMMIT DELETE ROWS"
)


class Backend(StrEnum):
    """Which time-series layout the database uses."""

    TIMESCALEDB = "timescaledb"
    POSTGRES = "postgres"


class StorageError(Exception):
    """Base of storage errors raised by this package."""


class SchemaNotReady(StorageError):
    """The database has not been migrated (run `ioc db upgrade`)."""


async def create_pool(dsn: str, config: StorageConfig, *, staging: bool = False,
                      min_size: int = 1, max_size: int | None = None, application_name: str = "ioc") -> asyncpg.Pool:
    """Open a pool. ``staging=True`` prepares the COPY staging table on every connection."""

    async def init(conn: asyncpg.Connection) -> None:
        if staging:
            await conn.execute(STAGING_DDL)

    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size or config.pool_size,
        statement_cache_size=config.statement_cache_size, init=init,
        server_settings={"application_name": application_name}, command_timeout=60)
    assert pool is not None
    return pool


async def read_backend(conn: Any) -> Backend:
    """Return the backend recorded by the migrations; raise :class:`SchemaNotReady` if none."""
    try:
        value = await conn.fetchval("SELECT value FROM ioc_meta WHERE key = 'backend'")
    except asyncpg.UndefinedTableError:
        value = None
    if value is None:
        raise SchemaNotReady("database has no IOC schema; run `ioc db upgrade`")
    return Backend(value)


async def timescaledb_available(conn: Any) -> bool:
    """True when the timescaledb extension can be (or is) installed in this database."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"))
