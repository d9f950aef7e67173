"""Smoke test: the PGlite (PostgreSQL 17 + TimescaleDB, WASM) test server speaks
enough PostgreSQL/TimescaleDB for the storage layer's migrations and queries.

See tests/support/PGLITE.md for what works and what does not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tests.support.pglite_server import PgliteServer, pglite_available, start_pglite

pytestmark = pytest.mark.integration

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def pglite() -> Iterator[PgliteServer]:
    ok, why = pglite_available()
    if not ok:
        pytest.skip(f"PGlite test server unavailable: {why}")
    with start_pglite(timeout=90) as server:
        yield server


async def _connect(server: PgliteServer) -> asyncpg.Connection:
    return await asyncio.wait_for(asyncpg.connect(server.dsn, statement_cache_size=0), 15)


@pytest.fixture
async def conn(pglite: PgliteServer) -> AsyncIterator[asyncpg.Connection]:
    c = await _connect(pglite)
    await c.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    try:
        yield c
    finally:
        await asyncio.wait_for(c.close(), 5)


async def _make_hypertable(c: asyncpg.Connection, name: str, rows: int = 600) -> None:
    await c.execute(
        f"""
        CREATE TABLE {name} (
            ts     timestamptz NOT NULL,
            device text        NOT NULL,
            value  float8
        );
        CREATE UNIQUE INDEX {name}_device_ts ON {name} (device, ts);
        """
    )
    await c.execute(f"SELECT create_hypertable('{name}', by_range('ts', INTERVAL '1 day'))")
    ts = [T0 + dt.timedelta(minutes=10 * i) for i in range(rows)]
    devices = [f"dev-{i % 3}" for i in range(rows)]
    values = [float(i) for i in range(rows)]
    status = await c.execute(
        f"INSERT INTO {name} SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::float8[]) ON CONFLICT DO NOTHING",
        ts,
        devices,
        values,
    )
    assert status == f"INSERT 0 {rows}"


async def test_timescaledb_extension(conn: asyncpg.Connection) -> None:
    version = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
    assert version and int(version.split(".")[0]) >= 2
    assert (await conn.fetchval("SHOW server_version_num")).startswith("17")
    # Apache-only builds say 'apache'; this one has the community features.
    assert await conn.fetchval("SHOW timescaledb.license") == "timescale"


async def test_hypertable_upsert_and_time_bucket(conn: asyncpg.Connection) -> None:
    await _make_hypertable(conn, "smoke_m", rows=600)  # 600 x 10 min = ~4.2 days
    assert await conn.fetchval("SELECT count(*) FROM show_chunks('smoke_m')") == 5

    # ON CONFLICT DO NOTHING against the (device, ts) unique index: all dupes.
    dup = await conn.execute(
        "INSERT INTO smoke_m SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::float8[]) ON CONFLICT DO NOTHING",
        [T0, T0 + dt.timedelta(minutes=10)],
        ["dev-0", "dev-1"],
        [-1.0, -1.0],
    )
    assert dup == "INSERT 0 0"
    # ... and DO UPDATE.
    await conn.execute(
        "INSERT INTO smoke_m VALUES ($1, 'dev-0', 42) ON CONFLICT (device, ts) DO UPDATE SET value = EXCLUDED.value",
        T0,
    )
    assert await conn.fetchval("SELECT value FROM smoke_m WHERE device = 'dev-0' AND ts = $1", T0) == 42

    rows = await conn.fetch(
        """
        SELECT time_bucket('1 hour', ts) AS bucket, device, count(*) AS n, avg(value) AS avg
        FROM smoke_m
        WHERE ts >= $1 AND ts < $2
        GROUP BY bucket, device
        ORDER BY bucket, device
        """,
        T0,
        T0 + dt.timedelta(hours=2),
    )
    assert [(r["bucket"], r["device"], r["n"]) for r in rows] == [
        (T0, "dev-0", 2),
        (T0, "dev-1", 2),
        (T0, "dev-2", 2),
        (T0 + dt.timedelta(hours=1), "dev-0", 2),
        (T0 + dt.timedelta(hours=1), "dev-1", 2),
        (T0 + dt.timedelta(hours=1), "dev-2", 2),
    ]
    assert rows[0]["avg"] == (42 + 3) / 2  # values 0 (updated to 42) and 3


async def test_continuous_aggregate_compression_retention(conn: asyncpg.Connection) -> None:
    await _make_hypertable(conn, "smoke_ca", rows=600)
    await conn.execute(
        """
        CREATE MATERIALIZED VIEW smoke_ca_hourly WITH (timescaledb.continuous) AS
        SELECT time_bucket('1 hour', ts) AS bucket, device, avg(value) AS avg_value, count(*) AS n
        FROM smoke_ca GROUP BY bucket, device
        WITH NO DATA
        """
    )
    cagg_job = await conn.fetchval(
        "SELECT add_continuous_aggregate_policy('smoke_ca_hourly', "
        "start_offset => INTERVAL '30 days', end_offset => INTERVAL '1 hour', "
        "schedule_interval => INTERVAL '5 minutes')"
    )
    # No background workers: refresh by hand.
    await conn.execute("CALL refresh_continuous_aggregate('smoke_ca_hourly', NULL, NULL)")
    assert await conn.fetchval("SELECT sum(n) FROM smoke_ca_hourly") == 600

    await conn.execute(
        "ALTER TABLE smoke_ca SET (timescaledb.compress, timescaledb.compress_segmentby = 'device', "
        "timescaledb.compress_orderby = 'ts DESC')"
    )
    compress_job = await conn.fetchval("SELECT add_compression_policy('smoke_ca', INTERVAL '7 days')")
    compressed = await conn.fetchval("SELECT count(compress_chunk(c)) FROM show_chunks('smoke_ca') c")
    assert compressed == 5
    assert await conn.fetchval("SELECT count(*) FROM smoke_ca") == 600  # reads decompress
    # Inserting into a compressed chunk works too.
    await conn.execute(
        "INSERT INTO smoke_ca VALUES ($1, 'dev-9', 1) ON CONFLICT DO NOTHING", T0 + dt.timedelta(seconds=1)
    )

    retention_job = await conn.fetchval("SELECT add_retention_policy('smoke_ca', INTERVAL '90 days')")
    jobs = {
        r["job_id"]: r["proc_name"]
        for r in await conn.fetch("SELECT job_id, proc_name FROM timescaledb_information.jobs")
    }
    assert jobs[cagg_job] == "policy_refresh_continuous_aggregate"
    assert jobs[compress_job] == "policy_compression"
    assert jobs[retention_job] == "policy_retention"
    # Jobs never run on their own, but run_job() runs one in the foreground:
    # all rows are from 2024, so retention (90 days) drops every chunk.
    await conn.execute(f"CALL run_job({retention_job})")
    assert await conn.fetchval("SELECT count(*) FROM smoke_ca") == 0

    ht = await conn.fetchrow(
        "SELECT num_chunks, compression_enabled FROM timescaledb_information.hypertables "
        "WHERE hypertable_name = 'smoke_ca'"
    )
    assert ht is not None and ht["compression_enabled"] and ht["num_chunks"] == 0
    assert (
        await conn.fetchval(
            "SELECT materialized_only FROM timescaledb_information.continuous_aggregates "
            "WHERE view_name = 'smoke_ca_hourly'"
        )
        is True
    )


async def test_catalog_and_partitioning(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        CREATE TABLE smoke_part (ts timestamptz NOT NULL, v int) PARTITION BY RANGE (ts);
        CREATE TABLE smoke_part_2024 PARTITION OF smoke_part
            FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        INSERT INTO smoke_part VALUES ('2024-05-01', 1);
        """
    )
    assert await conn.fetchval("SELECT tableoid::regclass::text FROM smoke_part") == "smoke_part_2024"
    cols = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = 'smoke_part' ORDER BY ordinal_position"
    )
    assert [(r["column_name"], r["data_type"]) for r in cols] == [
        ("ts", "timestamp with time zone"),
        ("v", "integer"),
    ]
    assert await conn.fetchval("SELECT to_regclass('public.smoke_part')::text") == "smoke_part"
    assert await conn.fetchval("SELECT relkind FROM pg_class WHERE relname = 'smoke_part'") == b"p"


async def test_copy_from_stdin_is_rejected_cleanly(conn: asyncpg.Connection) -> None:
    await conn.execute("CREATE TABLE IF NOT EXISTS smoke_copy (a int, b text)")
    # Unpatched, COPY FROM STDIN traps the WASM backend and kills the server;
    # server.mjs turns it into an ordinary error.
    with pytest.raises(asyncpg.FeatureNotSupportedError, match="COPY FROM STDIN"):
        await conn.copy_records_to_table("smoke_copy", records=[(1, "x")])
    assert await conn.fetchval("SELECT count(*) FROM smoke_copy") == 0  # connection still usable
    # COPY ... TO STDOUT works.
    await conn.execute("INSERT INTO smoke_copy VALUES (1, 'x')")
    out = io.BytesIO()
    assert await conn.copy_from_query("SELECT * FROM smoke_copy", output=out) == "COPY 1"
    assert out.getvalue() == b"1\tx\n"


async def test_connections_share_one_session(pglite: PgliteServer, conn: asyncpg.Connection) -> None:
    other = await _connect(pglite)
    try:
        await conn.execute("SET application_name = 'smoke-a'")
        assert await other.fetchval("SHOW application_name") == "smoke-a"  # one session for all
        # Advisory locks therefore never exclude another connection.
        assert await conn.fetchval("SELECT pg_try_advisory_lock(4242)") is True
        assert await other.fetchval("SELECT pg_try_advisory_lock(4242)") is True
        await conn.execute("SELECT pg_advisory_unlock_all()")

        # Concurrent queries on two connections get their own answers.
        async def ask(c: asyncpg.Connection, tag: str) -> list[str]:
            return [await c.fetchval("SELECT $1::text || $2::int", tag, i) for i in range(20)]

        got_a, got_b = await asyncio.gather(ask(conn, "a"), ask(other, "b"))
        assert got_a == [f"a{i}" for i in range(20)] and got_b == [f"b{i}" for i in range(20)]

        # An open transaction on one connection holds the others' queries back.
        await conn.execute("CREATE TABLE smoke_tx (x int)")
        tx = conn.transaction()
        await tx.start()
        await conn.execute("INSERT INTO smoke_tx VALUES (1)")
        waiting = asyncio.create_task(other.fetchval("SELECT count(*) FROM smoke_tx"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await tx.commit()
        assert await asyncio.wait_for(waiting, 5) == 1
    finally:
        await asyncio.wait_for(other.close(), 5)


async def test_pool(pglite: PgliteServer) -> None:
    pool = await asyncio.wait_for(asyncpg.create_pool(pglite.dsn, min_size=1, max_size=2, statement_cache_size=0), 15)
    try:

        async def work(i: int) -> int:
            async with pool.acquire() as c, c.transaction():
                return await c.fetchval("SELECT $1::int * 2", i)

        assert await asyncio.wait_for(asyncio.gather(*(work(i) for i in range(8))), 15) == [i * 2 for i in range(8)]
    finally:
        await asyncio.wait_for(pool.close(), 10)
