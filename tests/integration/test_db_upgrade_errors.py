"""`ioc db upgrade` when TimescaleDB is installed but not preloaded.

The server extension cannot be installed here, so: the facts the decision reads come from the real
PostgreSQL (as superuser and as a role that may not read the preload list), and the server's refusal is
reproduced faithfully: TimescaleDB's loader answers CREATE EXTENSION with a FATAL error that ends the
session, which a real PostgreSQL does for ``pg_terminate_backend(pg_backend_pid())`` too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from storage import migrate
from storage.config import StorageConfig
from storage.db import Backend
from storage.migrate import ServerFacts, TimescaleNotPreloaded, server_facts, upgrade
from tests.conftest import BASE_DSN, with_database

pytestmark = pytest.mark.integration


class RefusingServer(asyncpg.Connection):
    """A real connection whose CREATE EXTENSION timescaledb ends the session with a FATAL error, as the
    TimescaleDB loader does when it is not in shared_preload_libraries."""

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> str:
        if query.startswith("CREATE EXTENSION IF NOT EXISTS timescaledb"):
            query = "SELECT pg_terminate_backend(pg_backend_pid())"
        result: str = await super().execute(query, *args, **kwargs)
        return result


@pytest.fixture
async def empty_dsn() -> AsyncIterator[str]:
    name = f"ioc_test_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(BASE_DSN)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield with_database(BASE_DSN, name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_facts_from_the_real_server(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        facts = await server_facts(conn)
        assert facts.preload == await conn.fetchval("SHOW shared_preload_libraries")
        assert facts.installed is False
        role = f"ioc_reader_{uuid.uuid4().hex[:8]}"
        await conn.execute(f"CREATE ROLE {role}")
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL ROLE {role}")
                assert (await server_facts(conn)).preload is None  # not allowed to read it: CREATE tells
        finally:
            await conn.execute(f"DROP ROLE {role}")
    finally:
        await conn.close()


async def test_not_preloaded_says_what_to_do_and_changes_nothing(
        empty_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async def facts(conn: Any) -> ServerFacts:  # the package installed, the preload list unreadable
        return ServerFacts(available=True, installed=False, preload=None)

    monkeypatch.setattr(migrate, "server_facts", facts)
    conn = await asyncpg.connect(empty_dsn, connection_class=RefusingServer)
    with pytest.raises(TimescaleNotPreloaded) as err:
        await upgrade(conn, StorageConfig(timescaledb="auto"))
    assert "shared_preload_libraries" in str(err.value) and "IOC_STORAGE__TIMESCALEDB=off" in str(err.value)
    assert conn.is_closed()

    # Nothing was applied; with the setting the message names, the same database upgrades on PostgreSQL.
    fresh = await asyncpg.connect(empty_dsn)
    try:
        assert await fresh.fetchval("SELECT to_regclass('schema_migrations')") is None
        backend, applied = await upgrade(fresh, StorageConfig(timescaledb="off"))
        assert backend is Backend.POSTGRES and applied
    finally:
        await fresh.close()


async def test_cli_prints_the_fix_and_exits_1(empty_dsn: str, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    real = migrate.server_facts

    async def facts(conn: Any) -> ServerFacts:  # the real preload list (no timescaledb), the package "installed"
        seen = await real(conn)
        return ServerFacts(available=True, installed=False, preload=seen.preload)

    real_connect = asyncpg.connect

    async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        return await real_connect(*args, connection_class=RefusingServer, **kwargs)

    monkeypatch.setattr(migrate, "server_facts", facts)
    monkeypatch.setattr(asyncpg, "connect", connect)
    monkeypatch.setenv("IOC_DATABASE_URL", empty_dsn)
    from ioc.cli import main

    assert await asyncio.to_thread(main, ["db", "upgrade"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ioc db upgrade: the timescaledb extension is installed on the server but not loaded")
    assert "shared_preload_libraries is ''" in err and "Traceback" not in err
