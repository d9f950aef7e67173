"""Versioned migrations, applied by ``ioc db upgrade`` and never on the insert path.

Files in ``storage/migrations`` are named ``NNNN_name.sql`` (both backends) or
``NNNN_name.<backend>.sql`` (one per backend). Each runs in its own transaction, recorded in
``schema_migrations``; an advisory lock keeps two upgraders from racing.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from typing import Any

import asyncpg

from storage.config import StorageConfig
from storage.db import Backend, StorageError, timescaledb_available

logger = logging.getLogger(__name__)

_LOCK_KEY = 0x10C_0001
_NAME_RE = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?:\.(?P<backend>timescaledb|postgres))?\.sql")


@dataclass(frozen=True)
class Migration:
    """One migration file for the chosen backend."""

    version: int
    name: str
    sql: str


def migrations_for(backend: Backend) -> list[Migration]:
    """All migrations that apply to ``backend``, in version order."""
    found: dict[int, Migration] = {}
    for entry in resources.files("storage.migrations").iterdir():
        match = _NAME_RE.fullmatch(entry.name)
        if not match or match["backend"] not in (None, backend.value):
            continue
        version = int(match["version"])
        if version in found:
            raise StorageError(f"two migrations with version {version:04d}")
        found[version] = Migration(version, match["name"], entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


class TimescaleNotPreloaded(StorageError):
    """The timescaledb package is installed but the server was not started with it preloaded."""


#: What to do about it, in words an operator can act on.
NOT_PRELOADED_HELP = (
    "the timescaledb extension is installed on the server but not loaded: it must be listed in "
    "shared_preload_libraries. Fix: add it in postgresql.conf (shared_preload_libraries = 'timescaledb', "
    "keeping any libraries already listed) or run ALTER SYSTEM SET shared_preload_libraries = 'timescaledb' "
    "as a superuser, then restart PostgreSQL and run `ioc db upgrade` again. To use plain PostgreSQL "
    "(daily range partitions) on purpose instead, set IOC_STORAGE__TIMESCALEDB=off; that choice is recorded "
    "in the database and kept.")


@dataclass(frozen=True)
class ServerFacts:
    """What the server says about TimescaleDB, read before anything is changed."""

    available: bool  #: the package is installed (pg_available_extensions)
    installed: bool  #: CREATE EXTENSION was already done in this database
    preload: str | None  #: shared_preload_libraries, or None when this role may not read it


def preloaded(preload: str) -> bool:
    """True when ``timescaledb`` is one of the libraries in a shared_preload_libraries value."""
    names = (part.strip().strip('"').strip() for part in preload.split(","))
    return any(name.rsplit("/", 1)[-1].removesuffix(".so") == "timescaledb" for name in names)


async def server_facts(conn: Any) -> ServerFacts:
    """Read what :func:`decide_backend` needs; changes nothing."""
    available = await timescaledb_available(conn)
    installed = bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"))
    try:  # readable by superusers and members of pg_read_all_settings only
        preload = await conn.fetchval("SELECT current_setting('shared_preload_libraries')")
    except asyncpg.InsufficientPrivilegeError:
        preload = None
    return ServerFacts(available, installed, preload)


def decide_backend(config: StorageConfig, facts: ServerFacts) -> Backend:
    """Choose the backend of a fresh database: ``off`` -> PostgreSQL; else TimescaleDB when the package is
    installed on the server; ``require`` without it is an error.

    The preload is not judged here: some servers load TimescaleDB without listing it in
    shared_preload_libraries (the WebAssembly build used in tests). The server's own refusal of CREATE
    EXTENSION is the test (:func:`create_timescaledb`), and under ``auto`` it is not turned into a quiet
    fallback: someone installed the package to use it, and a database that starts on PostgreSQL stays on
    PostgreSQL, so falling back would make a half-done install permanent.
    """
    if config.timescaledb == "off":
        return Backend.POSTGRES
    if facts.installed or facts.available:
        return Backend.TIMESCALEDB
    if config.timescaledb == "require":
        raise StorageError("IOC_STORAGE__TIMESCALEDB=require but the timescaledb extension is not installed on "
                           "the server (pg_available_extensions has no timescaledb)")
    return Backend.POSTGRES


async def choose_backend(conn: Any, config: StorageConfig) -> Backend:
    """Decide the backend for a fresh database (or return the one it already uses)."""
    recorded = await conn.fetchval(
        "SELECT value FROM ioc_meta WHERE key = 'backend'") if await _has_table(conn, "ioc_meta") else None
    if recorded:
        return Backend(recorded)
    return decide_backend(config, await server_facts(conn))


async def create_timescaledb(conn: Any) -> None:
    """CREATE EXTENSION timescaledb, turning the server's refusal into :class:`TimescaleNotPreloaded`.

    Without the preload, TimescaleDB's loader refuses with a FATAL error ("extension timescaledb must be
    preloaded"), which ends the session: asyncpg raises ConnectionDoesNotExistError (or the error itself)
    and the connection is gone. Nothing has been changed by then (the upgrade lock is the session's).
    """
    preload = (await server_facts(conn)).preload
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        if "preload" in str(err).lower() or conn.is_closed():
            listed = "unreadable by this role" if preload is None else repr(preload)
            raise TimescaleNotPreloaded(f"{NOT_PRELOADED_HELP} (shared_preload_libraries is {listed}; "
                                        f"the server said: {err})") from err
        raise


async def upgrade(conn: Any, config: StorageConfig) -> tuple[Backend, list[str]]:
    """Bring the schema up to date and apply policies. Returns the backend and the migrations applied."""
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        backend = await choose_backend(conn, config)
        if backend is Backend.TIMESCALEDB:
            await create_timescaledb(conn)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, backend text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for mig in migrations_for(backend):
            if mig.version in done:
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, backend) VALUES ($1, $2, $3)",
                    mig.version, mig.name, backend.value)
                await conn.execute(
                    "INSERT INTO ioc_meta (key, value) VALUES ('backend', $1) ON CONFLICT (key) DO NOTHING",
                    backend.value)
            applied.append(f"{mig.version:04d}_{mig.name}")
            logger.info("applied migration %04d_%s (%s)", mig.version, mig.name, backend.value)
        if backend is Backend.TIMESCALEDB:
            await apply_timescaledb_policies(conn, config)
        return backend, applied
    finally:
        if not conn.is_closed():  # a FATAL error ended the session (and its lock): keep that error, not ours
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def apply_timescaledb_policies(conn: Any, config: StorageConfig) -> None:
    """(Re)apply compression and retention policies from settings; idempotent."""
    for table in ("telemetry", "device_status", "device_events"):
        await conn.execute("SELECT remove_retention_policy($1, if_exists => true)", table)
        await conn.execute("SELECT add_retention_policy($1, $2::interval)", table,
                           timedelta(days=config.retention_days))
    await conn.execute("SELECT remove_compression_policy('telemetry', if_exists => true)")
    await conn.execute("SELECT add_compression_policy('telemetry', $1::interval)",
                       timedelta(days=config.compress_after_days))
    if not await _has_table(conn, "telemetry_5m"):
        return  # before migration 0005
    # Rollups: refreshed by background jobs (late data within the start offset is folded in), kept longer
    # than the raw rows they summarise.
    views = [("telemetry_5m", timedelta(hours=6), timedelta(minutes=5), timedelta(minutes=5),
              config.rollup_5m_retention_days),
             ("telemetry_1h", timedelta(days=2), timedelta(hours=1), timedelta(minutes=30),
              config.rollup_1h_retention_days)]
    if await _has_table(conn, "kpi_5m"):  # migration 0011: the KPI rollups over them, kept as long
        views += [("kpi_5m", *views[0][1:]), ("kpi_1h", *views[1][1:])]
    for view, start, end, every, keep in views:
        await conn.execute("SELECT remove_continuous_aggregate_policy($1, if_exists => true)", view)
        await conn.execute("SELECT add_continuous_aggregate_policy($1, start_offset => $2::interval, "
                           "end_offset => $3::interval, schedule_interval => $4::interval)", view, start, end, every)
        await conn.execute("SELECT remove_retention_policy($1, if_exists => true)", view)
        await conn.execute("SELECT add_retention_policy($1, $2::interval)", view, timedelta(days=keep))
        if await conn.fetchval("SELECT compression_enabled FROM timescaledb_information.continuous_aggregates "
                               "WHERE view_name = $1", view):  # from migration 0009
            await conn.execute("SELECT remove_compression_policy($1, if_exists => true)", view)
            await conn.execute("SELECT add_compression_policy($1, compress_after => $2::interval)", view,
                               max(timedelta(days=config.compress_after_days), start + timedelta(days=1)))


async def current_version(conn: Any) -> int | None:
    """Highest applied migration version, or None for an empty database."""
    if not await _has_table(conn, "schema_migrations"):
        return None
    value = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    return int(value) if value is not None else None


async def _has_table(conn: Any, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))
