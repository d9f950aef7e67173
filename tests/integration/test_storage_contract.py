"""Storage contract: the same test bodies over both backends.

* ``postgres``: the real PostgreSQL 15 here, with TimescaleDB switched off (native range partitions);
* ``timescaledb``: PostgreSQL 17 + TimescaleDB 2.23 compiled to WebAssembly (PGlite), served on the wire
  protocol by tests/support/pglite. It has no COPY and a single shared session, so writes there use
  the ``unnest`` method; its background jobs do not run (policies are created, not exercised).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from dashboards.grafana.boards import all_dashboards
from ingest.latest import LatestValues
from storage import queries
from storage.config import StorageConfig
from storage.db import STAGING_DDL, Backend, read_backend
from storage.maintenance import run_maintenance
from storage.migrate import current_version, upgrade
from storage.rollups import complete_before, floor_to, refresh_recent, refresh_rollups, reorder_hourly
from storage.writes import (
    BatchRows,
    TelemetryRow,
    load_series_states,
    load_state,
    load_states,
    save_series_states,
    save_state,
    save_states,
    write_batch,
)
from tests.conftest import BASE_DSN, create_database, drop_database
from tests.support.corpus import small_jpeg
from tests.support.grafana import expand
from tests.support.mqtt import unique_id
from tests.support.pglite_server import PgliteError, start_pglite

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["postgres", "timescaledb"])
def backend_dsn(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Backend, str, dict[str, object]]]:
    import asyncio

    if request.param == "postgres":
        dsn = asyncio.run(create_database(BASE_DSN))
        yield Backend.POSTGRES, dsn, {}
        asyncio.run(drop_database(BASE_DSN, dsn))
        return
    try:
        server = start_pglite()
    except PgliteError as err:  # node/npm missing: say so loudly rather than pass quietly
        pytest.fail(f"TimescaleDB stand-in unavailable: {err}")
    try:
        yield Backend.TIMESCALEDB, server.dsn, server.connect_kwargs
    finally:
        server.stop()


@pytest.fixture
async def conn(backend_dsn: tuple[Backend, str, dict[str, object]]) -> AsyncIterator[asyncpg.Connection]:
    backend, dsn, kwargs = backend_dsn
    connection = await asyncpg.connect(dsn, **kwargs)  # type: ignore[arg-type]
    if backend is Backend.TIMESCALEDB:
        await upgrade(connection, StorageConfig())  # idempotent; the PostgreSQL db is migrated already
    yield connection
    await connection.close()


def method_for(backend: Backend) -> str:
    return "unnest" if backend is Backend.TIMESCALEDB else "copy"


async def test_schema_matches_backend_and_upgrade_is_idempotent(
        conn: asyncpg.Connection, backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    backend = backend_dsn[0]
    assert await read_backend(conn) is backend
    version = await current_version(conn)
    again_backend, applied = await upgrade(conn, StorageConfig(timescaledb="auto"))
    assert (again_backend, applied, await current_version(conn)) == (backend, [], version)
    if backend is Backend.TIMESCALEDB:
        tables = {r["hypertable_name"] for r in await conn.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables")}
        assert {"telemetry", "device_status", "device_events"} <= tables
        jobs = {r["proc_name"] for r in await conn.fetch("SELECT proc_name FROM timescaledb_information.jobs")}
        assert {"policy_retention", "policy_compression", "policy_refresh_continuous_aggregate"} <= jobs
    else:
        parts = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'telemetry'")
        assert parts >= 8  # default + yesterday .. a week ahead


async def test_write_then_read_back(conn: asyncpg.Connection,
                                   backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    backend = backend_dsn[0]
    if method_for(backend) == "copy":
        await conn.execute(STAGING_DDL)
    dev, cam = unique_id("T"), unique_id("C")
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    jpeg = small_jpeg(5)
    rows = BatchRows(
        telemetry=[(t0 + timedelta(minutes=i), dev, m, float(i * 10 + k), i)
                   for i in range(10) for k, m in enumerate(("speed_kmh", "flow_veh_h"))],
        status=[(t0, dev, "online", "boot", t0)],
        events=[(t0, dev, "loop_fault", "minor", '{"lane": 2}', t0)],
        snapshots=[(cam, hashlib.sha256(jpeg).digest(), t0, t0, 64, 48, len(jpeg), jpeg)],
        quarantine=[(t0, f"ioc/v1/traffic/{dev}/telemetry", "not_json", "payload is not valid JSON", -1,
                     b"{oops", 5, hashlib.sha256(dev.encode()).digest())],
        devices=[(cam, "camera", t0, t0, None, None, None, None, None, None),
                 (dev, "traffic", t0, t0 + timedelta(minutes=9), 20.86, 106.68, "online", "boot", t0, 9)])
    await write_batch(conn, rows, method_for(backend))  # type: ignore[arg-type]
    await write_batch(conn, rows, method_for(backend))  # a redelivery adds nothing
    await _write_latest(conn, rows.telemetry, rows.telemetry)

    device = await queries.get_device(conn, dev)
    assert device is not None
    assert (device["kind"], device["state"], device["lat"], device["last_seq"]) == ("traffic", "online", 20.86, 9)
    assert {d["device_id"] for d in await queries.list_devices(conn, kind="camera", limit=10_000)} >= {cam}

    latest = {r["metric"]: r["value"] for r in await queries.latest_values(conn, dev, t0 - timedelta(days=1))}
    assert latest == {"speed_kmh": 90.0, "flow_veh_h": 91.0}
    seed = {r["metric"]: r["value"] for r in await queries.recent_latest_values(conn, t0) if r["device_id"] == dev}
    assert seed == latest
    # a late reading (older than the newest) is stored but does not become the latest value
    late = BatchRows(telemetry=[(t0 - timedelta(minutes=5), dev, "speed_kmh", -1.0, None),
                                (t0 + timedelta(minutes=20), dev, "occupancy_pct", 7.0, None)])
    await write_batch(conn, late, method_for(backend))  # type: ignore[arg-type]
    await _write_latest(conn, late.telemetry)
    latest = {r["metric"]: r["value"] for r in await queries.latest_values(conn, dev, t0 - timedelta(days=1))}
    assert latest == {"speed_kmh": 90.0, "flow_veh_h": 91.0, "occupancy_pct": 7.0}

    raw = await queries.raw_points(conn, dev, "speed_kmh", t0, t0 + timedelta(hours=1), 1000)
    assert [r["value"] for r in raw] == [i * 10.0 for i in range(10)]

    buckets = await queries.bucketed_points(conn, backend, dev, "speed_kmh", t0, t0 + timedelta(hours=1),
                                            timedelta(minutes=5), 1000)
    assert sum(b["count"] for b in buckets) == 10
    assert all(b["bucket"].minute % 5 == 0 and b["bucket"].second == 0 for b in buckets)
    assert max(b["max"] for b in buckets) == 90.0

    quarantined = [q for q in await queries.quarantine(conn, 1000, "not_json") if dev in q["topic"]]
    assert len(quarantined) == 1 and quarantined[0]["payload"] == b"{oops"

    snap = await queries.latest_snapshot(conn, cam)
    assert snap is not None and snap["jpeg"] == jpeg and (snap["width"], snap["height"]) == (64, 48)


async def test_older_status_does_not_override_newer(conn: asyncpg.Connection,
                                                    backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    method = method_for(backend_dsn[0])
    dev = unique_id("B")
    t0 = datetime.now(UTC) - timedelta(minutes=10)

    def device_row(state: str | None, ts: datetime | None) -> tuple[object, ...]:
        return (dev, "bts", t0, t0, None, None, state, None, ts, None)

    await write_batch(conn, BatchRows(devices=[device_row("offline", t0 + timedelta(minutes=5))]), method)  # type: ignore[list-item, arg-type]
    await write_batch(conn, BatchRows(devices=[device_row("online", t0)]), method)  # type: ignore[list-item, arg-type]
    # A will without device timestamp (state_ts NULL) only fills a registry that has no state yet.
    await write_batch(conn, BatchRows(devices=[device_row("degraded", None)]), method)  # type: ignore[list-item, arg-type]
    device = await queries.get_device(conn, dev)
    assert device is not None and device["state"] == "offline"


async def test_detector_states_are_kept_by_name_and_age(conn: asyncpg.Connection) -> None:
    prefix = unique_id("cam") + ":"
    await save_state(conn, prefix.rstrip(":"), b"numeric")
    await save_states(conn, [(prefix + "a", b"\x00one"), (prefix + "b", b"two")])
    await save_states(conn, [(prefix + "a", b"\x00one, later")])  # the latest state wins
    assert sorted(await load_states(conn, prefix, 3600)) == [(prefix + "a", b"\x00one, later"), (prefix + "b", b"two")]
    assert await load_state(conn, prefix.rstrip(":")) == b"numeric"  # a name that merely starts alike is not listed
    await conn.execute("UPDATE analytics_state SET updated_at = now() - interval '2 hours' WHERE name = $1",
                       prefix + "b")
    assert await load_states(conn, prefix, 3600) == [(prefix + "a", b"\x00one, later")]


async def test_learned_state_is_kept_per_device_and_scope(conn: asyncpg.Connection) -> None:
    scope, other = unique_id("numeric"), unique_id("numeric")
    big = bytes(range(256)) * 40  # past the size PostgreSQL moves out of line (kept as is: storage EXTERNAL)
    await save_series_states(conn, scope, [("dev-b", b"\x01b"), ("dev-a", big)])
    await save_series_states(conn, scope, [("dev-b", b"\x01b, later")])  # only what changed is written again
    await save_series_states(conn, other, [("dev-a", b"another detector")])
    await save_series_states(conn, scope, [])
    assert sorted(await load_series_states(conn, scope)) == [("dev-a", big), ("dev-b", b"\x01b, later")]
    assert await load_series_states(conn, other) == [("dev-a", b"another detector")]


async def _write_latest(conn: asyncpg.Connection, *batches: list[TelemetryRow]) -> None:
    """What an ingest worker does with committed readings: coalesce, then write the newest per key."""
    latest = LatestValues()
    for rows in batches:
        latest.add(rows)
    await latest.flush(conn)


async def test_maintenance_runs(conn: asyncpg.Connection,
                                backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    backend = backend_dsn[0]
    stats = await run_maintenance(conn, backend, StorageConfig(snapshot_history=1),
                                  now=datetime.now(UTC) + timedelta(days=3))
    if backend is Backend.POSTGRES:
        assert stats["partitions_created"] == 3 * 3  # three days further ahead, for three tables
    assert stats["snapshots_pruned"] >= 0


async def test_stored_values_near_the_float_limit_do_not_stop_the_refresh(
        conn: asyncpg.Connection, backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    """Rows of ±1e308 (stored before the ingest refused them) made every refresh of their bucket overflow."""
    if backend_dsn[0] is not Backend.POSTGRES:
        pytest.skip("TimescaleDB's aggregates: the ingest refuses such values (ingest.contract.MAX_ABS_VALUE)")
    await conn.execute(STAGING_DDL)
    dev, now = unique_id("HUGE"), datetime.now(UTC)
    t = floor_to(now - timedelta(minutes=20), timedelta(minutes=5))
    await write_batch(conn, BatchRows(telemetry=[(t + timedelta(seconds=k), dev, "flow_veh_h", 1.7e308, None)
                                                 for k in range(3)]), "copy")
    assert await refresh_recent(conn, Backend.POSTGRES, now, timedelta(minutes=30))
    row = await conn.fetchrow("SELECT avg, max, n FROM telemetry_5m WHERE device_id = $1", dev)
    assert (row["avg"], row["max"], row["n"]) == (1e100, 1.7e308, 3)


async def test_hourly_rollup_index_is_rebuilt_weekly_and_a_broken_rebuild_cleaned(
        conn: asyncpg.Connection, backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    backend = backend_dsn[0]
    now = datetime.now(UTC)
    assert await reorder_hourly(conn, backend, now, 7) is None  # first run: starts counting
    if backend is Backend.TIMESCALEDB:
        return  # its aggregates are compressed by device: nothing to rebuild
    await conn.execute("INSERT INTO telemetry_1h (bucket, device_id, metric, avg, min, max, n) VALUES "
                       "($1, 'a', 'm', 1, 1, 1, 1), ($1, 'b', 'm', 1, 1, 1, 1)", floor_to(now, timedelta(hours=1)))
    # a rebuild cut short leaves an invalid index behind (as this failed concurrent build does)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute("CREATE UNIQUE INDEX CONCURRENTLY telemetry_1h_broken ON telemetry_1h (metric)")
    assert await reorder_hourly(conn, backend, now + timedelta(days=3), 7) is None  # not due yet
    assert await reorder_hourly(conn, backend, now + timedelta(days=8), 7) is not None
    indexes = {r["relname"]: r["indisvalid"] for r in await conn.fetch(
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = 'telemetry_1h'::regclass")}
    assert "telemetry_1h_broken" not in indexes and indexes["telemetry_1h_pkey"] is True
    assert await reorder_hourly(conn, backend, now + timedelta(days=9), 7) is None  # counted from the rebuild


async def test_maintenance_forgets_devices_silent_past_retention(
        conn: asyncpg.Connection, backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    backend = backend_dsn[0]
    if method_for(backend) == "copy":
        await conn.execute(STAGING_DDL)
    gone, alive, scope = unique_id("G"), unique_id("A"), unique_id("scope")
    now = datetime.now(UTC)
    await _write_latest(conn, [(now - timedelta(days=40), gone, "speed_kmh", 1.0, None),
                               (now, alive, "speed_kmh", 2.0, None)])
    await save_series_states(conn, scope, [(gone, b"old"), (alive, b"new")])
    await conn.execute("UPDATE series_state SET updated_at = $1 WHERE device_id = $2", now - timedelta(days=40), gone)
    stats = await run_maintenance(conn, backend, StorageConfig(retention_days=30))
    assert stats["latest_pruned"] >= 1 and stats["series_state_pruned"] >= 1
    assert await load_series_states(conn, scope) == [(alive, b"new")]
    kept = await conn.fetch("SELECT device_id FROM telemetry_latest WHERE device_id = ANY($1::text[])", [gone, alive])
    assert [r["device_id"] for r in kept] == [alive]


async def test_rollups_agree_with_the_raw_rows_and_fold_in_late_data(
        conn: asyncpg.Connection, backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    backend = backend_dsn[0]
    method = method_for(backend)
    if method == "copy":
        await conn.execute(STAGING_DDL)
    dev = unique_id("R")
    t0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)  # a whole hour: 5-minute buckets 08:00 .. 08:55
    rows = [(t0 + timedelta(minutes=i), dev, "speed_kmh", float(i), i) for i in range(60)]
    await write_batch(conn, BatchRows(telemetry=rows), method)  # type: ignore[arg-type]
    await refresh_rollups(conn, backend, t0, t0 + timedelta(hours=1))
    five = await conn.fetch("SELECT bucket, avg, min, max, n FROM telemetry_5m WHERE device_id = $1 "
                            "ORDER BY bucket", dev)
    assert [r["n"] for r in five] == [5] * 12
    assert [(r["min"], r["max"], r["avg"]) for r in five][:2] == [(0.0, 4.0, 2.0), (5.0, 9.0, 7.0)]
    hour = await conn.fetchrow("SELECT bucket, avg, min, max, n FROM telemetry_1h WHERE device_id = $1", dev)
    assert (hour["bucket"], hour["n"], hour["min"], hour["max"], hour["avg"]) == (t0, 60, 0.0, 59.0, 29.5)
    # A late reading inside an already rolled-up bucket, then a refresh of that window: folded in.
    late = [(t0 + timedelta(minutes=2, seconds=30), dev, "speed_kmh", 100.0, None)]
    await write_batch(conn, BatchRows(telemetry=late), method)  # type: ignore[arg-type]
    await refresh_rollups(conn, backend, t0, t0 + timedelta(minutes=5))
    first = await conn.fetchrow("SELECT avg, max, n FROM telemetry_5m WHERE device_id = $1 AND bucket = $2", dev, t0)
    assert (first["n"], first["max"], first["avg"]) == (6, 100.0, 110.0 / 6)
    assert await conn.fetchval("SELECT n FROM telemetry_1h WHERE device_id = $1", dev) == 61


async def test_every_grafana_panel_query_runs(conn: asyncpg.Connection,
                                              backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    """Each dashboard query, expanded as Grafana's PostgreSQL data source expands it, runs on this backend
    and returns the columns its panel format needs."""
    backend = backend_dsn[0]
    method = method_for(backend)
    if method == "copy":
        await conn.execute(STAGING_DDL)
    dev = unique_id("G")
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [(now - timedelta(minutes=i), dev, m, float(i), None) for i in range(30)
            for m in ("speed_kmh", "availability_pct", "mains_power")]
    await write_batch(conn, BatchRows(telemetry=rows, devices=[(dev, "traffic", now, now, 20.86, 106.68, "online",
                                                                None, now, None)]), method)  # type: ignore[arg-type]
    await conn.execute("UPDATE devices SET district = 'HB' WHERE device_id = $1", dev)
    await refresh_rollups(conn, backend, now - timedelta(hours=1), now)
    for board in all_dashboards():
        for panel in board["panels"]:
            for target in panel["targets"]:
                sql = expand(target["rawSql"], backend is Backend.TIMESCALEDB, now - timedelta(hours=6), now,
                             districts=["HB"])
                result = await conn.fetch(sql)
                if target["format"] == "time_series" and result:
                    assert "time" in dict(result[0]), (board["uid"], panel["title"])
                if panel["title"] == "Speed by district":
                    assert result and {r["metric"] for r in result} == {"HB"}


async def test_bucketed_reads_from_the_rollups_agree_with_the_raw_rows(
        conn: asyncpg.Connection, backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    backend = backend_dsn[0]
    method = method_for(backend)
    if method == "copy":
        await conn.execute(STAGING_DDL)
    dev = unique_id("Q")
    t0 = datetime(2026, 11, 24, 6, 0, tzinfo=UTC)
    rows = [(t0 + timedelta(seconds=30 * i), dev, m, float((i * 7) % 23 + k), None)
            for i in range(4 * 120) for k, m in enumerate(("speed_kmh", "flow_veh_h"))]
    await write_batch(conn, BatchRows(telemetry=rows), method)  # type: ignore[arg-type]
    await refresh_rollups(conn, backend, t0, t0 + timedelta(hours=4))
    end = t0 + timedelta(hours=4)
    for width, source in ((timedelta(minutes=15), queries.Source.ROLLUP_5M),
                          (timedelta(hours=2), queries.Source.ROLLUP_1H)):
        assert queries.source_for(width) is source
        got = await queries.bucketed_points(conn, backend, dev, None, t0, end, width, 1000)
        raw = await queries.bucketed_points(conn, backend, dev, None, t0, end, width, 1000, queries.Source.RAW)
        assert len(got) == len(raw) == 2 * (4 * 3600 // int(width.total_seconds()))
        assert [(g["bucket"], g["metric"], g["count"], g["min"], g["max"]) for g in got] == \
               [(r["bucket"], r["metric"], r["count"], r["min"], r["max"]) for r in raw]
        assert all(abs(g["avg"] - r["avg"]) < 1e-9 for g, r in zip(got, raw, strict=True))
        page = await queries.bucketed_points(conn, backend, dev, None, t0, end, width, 3, None,
                                             after=(got[2]["bucket"], got[2]["metric"]))
        assert page == got[3:6]


async def test_incremental_refresh_recomputes_only_what_was_written(conn: asyncpg.Connection,
        backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    """PostgreSQL fallback: the refresh folds in exactly the buckets that got rows, late ones included."""
    if backend_dsn[0] is not Backend.POSTGRES:
        pytest.skip("TimescaleDB's continuous aggregates track invalidations themselves")
    await conn.execute(STAGING_DDL)
    now = datetime.now(UTC).replace(microsecond=0)
    await refresh_recent(conn, Backend.POSTGRES, now, timedelta(minutes=10))  # settle what others left
    dev = unique_id("I")
    # far outside any look-back window, early in its 5-minute bucket (the late reading below must share it)
    old = floor_to(now - timedelta(days=2, minutes=3), timedelta(minutes=5)) + timedelta(seconds=30)
    await write_batch(conn, BatchRows(telemetry=[(old, dev, "speed_kmh", 10.0, None),
                                                 (now - timedelta(minutes=7), dev, "speed_kmh", 20.0, None)]), "copy")
    marks = await conn.fetchval("SELECT count(DISTINCT bucket) FROM telemetry_dirty")
    assert marks >= 2
    assert await refresh_recent(conn, Backend.POSTGRES, now, timedelta(minutes=10))
    assert await conn.fetchval("SELECT count(*) FROM telemetry_dirty WHERE noted_at < $1", now) == 0
    five = dict(await conn.fetch("SELECT bucket, n FROM telemetry_5m WHERE device_id = $1", dev))
    assert sum(five.values()) == 2
    # A late reading into the old bucket, and a redelivery (adds nothing, marks nothing)
    await write_batch(conn, BatchRows(telemetry=[(old + timedelta(seconds=20), dev, "speed_kmh", 40.0, None)]),
                      "copy")
    before = await conn.fetchval("SELECT count(*) FROM telemetry_dirty")
    await write_batch(conn, BatchRows(telemetry=[(old, dev, "speed_kmh", 10.0, None)]), "copy")
    assert await conn.fetchval("SELECT count(*) FROM telemetry_dirty") == before
    await refresh_recent(conn, Backend.POSTGRES, now, timedelta(minutes=10))
    row = await conn.fetchrow("SELECT n, avg, max FROM telemetry_5m WHERE device_id = $1 AND bucket <= $2 "
                              "ORDER BY bucket DESC LIMIT 1", dev, old)
    assert (row["n"], row["avg"], row["max"]) == (2, 25.0, 40.0)
    assert await conn.fetchval("SELECT sum(n) FROM telemetry_1h WHERE device_id = $1", dev) == 3
    done = await complete_before(conn)
    assert done is not None and now - timedelta(minutes=7) <= done <= now


async def _register(conn: asyncpg.Connection, method: str, devices: dict[str, tuple[str, str]]) -> None:
    """Devices into the registry as the ingest puts them there: id -> (kind, district)."""
    now = datetime.now(UTC)
    await write_batch(conn, BatchRows(devices=[(d, kind, now, now, 20.86, 106.68, "online", None, now, None)
                                               for d, (kind, _) in devices.items()]), method)  # type: ignore[arg-type]
    for d, (_, district) in devices.items():
        await conn.execute("UPDATE devices SET district = $2 WHERE device_id = $1", d, district)


async def test_city_kpis_from_the_rollups(conn: asyncpg.Connection,
                                          backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    backend = backend_dsn[0]
    method = method_for(backend)
    if method == "copy":
        await conn.execute(STAGING_DDL)
    t0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    tag = unique_id("K")
    await _register(conn, method, {f"{tag}-t0": ("traffic", "A"), f"{tag}-t1": ("traffic", "B"),
                                   f"{tag}-b": ("bts", "A")})
    rows = [(t0 + timedelta(minutes=i), f"{tag}-t{d}", "speed_kmh", 10.0 * (d + 1), None)
            for i in range(20) for d in range(2)]
    rows += [(t0 + timedelta(minutes=i), f"{tag}-b", "availability_pct", 99.0, None) for i in range(0, 20, 7)]
    await write_batch(conn, BatchRows(telemetry=rows), method)  # type: ignore[arg-type]
    await refresh_rollups(conn, backend, t0, t0 + timedelta(minutes=20))
    got = await queries.kpi_history(conn, backend, t0, t0 + timedelta(minutes=20), timedelta(minutes=10))
    assert [(r["bucket"], r["speed"], r["bts_reporting"]) for r in got] == [
        (t0, 15.0, 1), (t0 + timedelta(minutes=10), 15.0, 1)]  # one BTS, read at minutes 0, 7 | 14
    assert all(type(r[k]) is int for r in got for k in ("bts_reporting", "cam_reporting"))  # not Decimal
    raw = await queries.kpi_history(conn, backend, t0, t0 + timedelta(minutes=20), timedelta(minutes=2))
    assert sum(r["bts_reporting"] for r in raw) == 3 and len(raw) == 10


async def test_kpi_rollups_per_district_agree_with_the_raw_rows(
        conn: asyncpg.Connection, backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    """kpi_5m / kpi_1h: per district, kind and metric, what the screens read; a device that moves district
    counts in its new district from the buckets rolled up after the move (late data included)."""
    backend = backend_dsn[0]
    method = method_for(backend)
    if method == "copy":
        await conn.execute(STAGING_DDL)
    tag = unique_id("D")
    a, b = f"{tag}-A", f"{tag}-B"
    t0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    await _register(conn, method, {f"{tag}-s0": ("traffic", a), f"{tag}-s1": ("traffic", a),
                                   f"{tag}-s2": ("traffic", b), f"{tag}-c0": ("bts", a), f"{tag}-c1": ("bts", a)})
    rows = [(t0 + timedelta(seconds=30 * i), f"{tag}-s{d}", "flow_veh_h", float(100 * (d + 1) + i % 7), None)
            for i in range(120) for d in range(3)]
    rows += [(t0 + timedelta(minutes=i), f"{tag}-c{c}", "mains_power", 0.0 if c == 1 and 10 <= i < 20 else 1.0,
              None) for i in range(60) for c in range(2)]
    await write_batch(conn, BatchRows(telemetry=rows), method)  # type: ignore[arg-type]
    await refresh_rollups(conn, backend, t0, t0 + timedelta(hours=1))
    five = await conn.fetch("SELECT bucket, district, sum, n, min, max, devices, sum_avg FROM kpi_5m "
                            "WHERE district = ANY($1::text[]) AND kind = 'traffic' AND metric = 'flow_veh_h' "
                            "ORDER BY bucket, district", [a, b])
    assert [(r["bucket"], r["district"]) for r in five] == [
        (t0 + timedelta(minutes=5 * k), d) for k in range(12) for d in (a, b)]
    for r in five:
        devs = (f"{tag}-s0", f"{tag}-s1") if r["district"] == a else (f"{tag}-s2",)
        mine = [row[3] for row in rows if row[1] in devs and r["bucket"] <= row[0] < r["bucket"] + timedelta(
            minutes=5)]
        assert (r["n"], r["devices"], r["min"], r["max"]) == (len(mine), 2 if r["district"] == a else 1,
                                                             min(mine), max(mine))
        assert abs(r["sum"] - sum(mine)) < 1e-6  # type: ignore[arg-type]
        assert abs(r["sum_avg"] - r["sum"] / r["n"] * r["devices"]) < 1e-6  # same cadence: mean x devices
    low = await conn.fetch("SELECT bucket, devices, devices_low FROM kpi_5m WHERE district = $1 AND kind = 'bts' "
                           "AND metric = 'mains_power' ORDER BY bucket", a)
    assert [(r["devices"], r["devices_low"]) for r in low] == [(2, 1 if k in (2, 3) else 0) for k in range(12)]
    hour = await conn.fetchrow("SELECT devices, n, devices_low FROM kpi_1h WHERE district = $1 AND kind = 'bts' "
                               "AND metric = 'mains_power' AND bucket = $2", a, t0)
    assert (hour["devices"], hour["n"], hour["devices_low"]) == (2, 120, 1)
    # s1 moves to district B, then a late reading lands in the first bucket: that bucket is rolled up again
    await conn.execute("UPDATE devices SET district = $2 WHERE device_id = $1", f"{tag}-s1", b)
    await write_batch(conn, BatchRows(telemetry=[(t0 + timedelta(seconds=10), f"{tag}-s1", "flow_veh_h", 1.0,
                                                  None)]), method)  # type: ignore[arg-type]
    await refresh_rollups(conn, backend, t0, t0 + timedelta(seconds=20))  # the first 5 minutes only
    moved = dict(await conn.fetch("SELECT district, devices FROM kpi_5m WHERE district = ANY($1::text[]) "
                                  "AND kind = 'traffic' AND metric = 'flow_veh_h' AND bucket = $2", [a, b], t0))
    kept = dict(await conn.fetch("SELECT district, devices FROM kpi_5m WHERE district = ANY($1::text[]) "
                                 "AND kind = 'traffic' AND metric = 'flow_veh_h' AND bucket = $2", [a, b],
                                 t0 + timedelta(minutes=5)))
    assert (moved, kept) == ({a: 1, b: 2}, {a: 2, b: 1})


async def test_city_kpis_read_the_raw_rows_past_the_rollups(
        conn: asyncpg.Connection, backend_dsn: tuple[Backend, str, dict[str, object]]) -> None:
    """PostgreSQL fallback: buckets past ``complete_before`` come from the raw rows, so the wall's KPIs never
    lack their last minutes (TimescaleDB's real-time aggregation does the same for its aggregates)."""
    if backend_dsn[0] is not Backend.POSTGRES:
        pytest.skip("TimescaleDB computes the buckets past its watermark itself (real-time aggregation)")
    await conn.execute(STAGING_DDL)
    t0 = datetime(2026, 11, 28, 14, 0, tzinfo=UTC)
    tag = unique_id("KT")
    await _register(conn, "copy", {f"{tag}-t": ("traffic", "A"), f"{tag}-b0": ("bts", "A"),
                                   f"{tag}-b1": ("bts", "B")})
    rows = [(t0 + timedelta(minutes=i), f"{tag}-t", "speed_kmh", float(i), None) for i in range(20)]
    rows += [(t0 + timedelta(minutes=i), f"{tag}-b{b}", "availability_pct", 100.0, None)
             for i in range(20) for b in range(2) if b == 0 or i >= 10]
    await write_batch(conn, BatchRows(telemetry=rows), "copy")  # type: ignore[arg-type]
    await refresh_rollups(conn, Backend.POSTGRES, t0, t0 + timedelta(minutes=9))  # buckets 0 and 5 only
    saved = await complete_before(conn)
    await conn.execute("INSERT INTO rollup_state VALUES ('telemetry', $1, now()) ON CONFLICT (name) "
                       "DO UPDATE SET complete_before = excluded.complete_before", t0 + timedelta(minutes=10))
    try:
        got = await queries.kpi_history(conn, Backend.POSTGRES, t0, t0 + timedelta(minutes=20),
                                        timedelta(minutes=5))
    finally:
        await conn.execute("DELETE FROM rollup_state WHERE name = 'telemetry'")
        if saved is not None:
            await conn.execute("INSERT INTO rollup_state VALUES ('telemetry', $1, now())", saved)
    assert [(r["bucket"], r["speed"], r["bts_reporting"]) for r in got] == [
        (t0 + timedelta(minutes=5 * k), 5.0 * k + 2, 1 if k < 2 else 2) for k in range(4)]
    assert await conn.fetchval("SELECT count(*) FROM kpi_5m WHERE district = 'A' AND bucket >= $1 AND bucket < $2",
                               t0 + timedelta(minutes=10), t0 + timedelta(minutes=20)) == 0
