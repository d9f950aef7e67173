"""A day of a province's telemetry and a year of rollups, on both storage backends.

    python -m benchmarks.storage_scale                      # PostgreSQL at --scale 0.1, PGlite at 0.01
    python -m benchmarks.storage_scale --scale 1            # the full day: about 55 million readings
    python -m benchmarks.storage_scale --backend postgres --scale 0.25 --rollup-days 365

A province sends 3,240 BTS x 9 metrics every 60 s, 500 traffic sensors x 5 every 30 s and 1,000
cameras x 4 every 60 s: 55.3 million readings a day. ``--scale`` takes that share of each kind's
devices (the cadence stays real). The day before today is loaded through the ingest write path
(``storage.writes.write_batch``: COPY on PostgreSQL, the unnest insert on PGlite, which has no COPY),
in time order, ``--writers`` connections at once; then the rollups are refreshed, and a year of hourly
rollups and ``--days-5m`` days of 5-minute rollups before that day are generated in the database for the
same devices, with the KPI rollups (per district, kind and metric) over them (a year of 5-minute rollups for
a whole province is 3.75 billion rows: see docs/storage.md).

Printed: load rate, rollup refresh times (whole day, then the incremental refresh after 5 more minutes,
and the old full look-back refresh for comparison), bytes on disk per reading and per rollup row
(TimescaleDB: before and after compression), and p50/p95 of the queries the screens make. Each backend
runs in a database created for the run and dropped after it (PostgreSQL) or a private PGlite server.

TimescaleDB runs in PGlite (WebAssembly, one session, no background jobs): figures there are for what
it can show (compression ratios, that the queries run), not for speed; a real TimescaleDB server was not
available on the development machine.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import shutil
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from dashboards.grafana.boards import all_dashboards
from ingest.config import IngestConfig
from ingest.contract import METRICS
from ingest.latest import LatestValues
from storage import queries
from storage.config import StorageConfig
from storage.db import STAGING_DDL, Backend
from storage.maintenance import ensure_partitions
from storage.migrate import upgrade
from storage.rollups import recompute_kpis, refresh_recent, refresh_rollups, reorder_hourly
from storage.writes import BatchRows, write_batch
from tests.support.grafana import expand

BASE_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
#: kind -> (devices in a province, seconds between readings)
PROVINCE = {"bts": (3240, 60), "traffic": (500, 30), "camera": (1000, 60)}
DISTRICTS = [f"D{i:02d}" for i in range(12)]
#: the charts of the device page: (name, range, bucket)
CHARTS = [("device chart 24 h", timedelta(hours=24), timedelta(minutes=15)),
          ("device chart 7 d", timedelta(days=7), timedelta(minutes=30)),
          ("device chart 90 d", timedelta(days=90), timedelta(hours=3)),
          ("device chart 1 y", timedelta(days=365), timedelta(days=1))]


@dataclass
class Device:
    device_id: str
    kind: str
    district: str
    metrics: list[str] = field(default_factory=list)


@dataclass
class Report:
    backend: str
    scale: float
    lines: list[str] = field(default_factory=list)

    def add(self, what: str, value: str) -> None:
        self.lines.append(f"  {what:<52} {value}")
        print(f"[{self.backend}] {what:<52} {value}", flush=True)


def province(scale: float) -> list[Device]:
    """The scaled province's devices, spread over districts."""
    out = []
    for kind, (count, _) in PROVINCE.items():
        for i in range(max(1, round(count * scale))):
            out.append(Device(f"{kind[:3].upper()}-{i:05d}", kind, DISTRICTS[i % len(DISTRICTS)], list(METRICS[kind])))
    return out


def readings_per_day(devices: list[Device]) -> int:
    return sum(len(d.metrics) * 86400 // PROVINCE[d.kind][1] for d in devices)


def batches(devices: list[Device], start: datetime, seconds: int, rows_per_batch: int,
            seed: int = 7) -> Iterator[list[tuple[datetime, str, str, float, int | None]]]:
    """Readings in time order, as the ingest batches them: a daily shape plus noise, one decimal."""
    rng = random.Random(seed)
    base = {(d.device_id, m): rng.uniform(10, 90) for d in devices for m in d.metrics}
    batch: list[tuple[datetime, str, str, float, int | None]] = []
    for step in range(0, seconds, 30):
        ts = start + timedelta(seconds=step)
        shape = math.sin((ts.hour * 3600 + ts.minute * 60) / 86400 * 2 * math.pi)
        for d in devices:
            if step % PROVINCE[d.kind][1]:
                continue
            for m in d.metrics:
                value = round(base[(d.device_id, m)] * (1 + 0.2 * shape) + rng.gauss(0, 1.5), 1)
                batch.append((ts, d.device_id, m, value, None))
            if len(batch) >= rows_per_batch:
                yield batch
                batch = []
    if batch:
        yield batch


async def load(connect: Callable[[], Awaitable[asyncpg.Connection]], backend: Backend, devices: list[Device],
               start: datetime, seconds: int, writers: int, rows_per_batch: int) -> tuple[int, float]:
    """Write ``seconds`` of readings through the ingest write path; return (rows, seconds taken)."""
    method = "unnest" if backend is Backend.TIMESCALEDB else "copy"
    queue: asyncio.Queue[list[Any] | None] = asyncio.Queue(maxsize=2 * writers)
    written = 0

    async def writer() -> None:
        # as an ingest worker does: each batch in its transaction, the newest value per key coalesced and
        # written every IOC_INGEST__LATEST_EVERY_S (2 s of wall time, whatever the data's own time)
        nonlocal written
        conn = await connect()
        latest, latest_at = LatestValues(), time.monotonic()
        try:
            if method == "copy":
                await conn.execute(STAGING_DDL)
            while (batch := await queue.get()) is not None:
                await write_batch(conn, BatchRows(telemetry=batch), method)  # type: ignore[arg-type]
                latest.add(batch)
                written += len(batch)
                if time.monotonic() - latest_at >= IngestConfig().latest_every_s:
                    await latest.flush(conn)
                    latest_at = time.monotonic()
            await latest.flush(conn)
        finally:
            await conn.close()

    tasks = [asyncio.create_task(writer()) for _ in range(writers)]
    began = time.perf_counter()
    for batch in batches(devices, start, seconds, rows_per_batch, seed=int(start.timestamp())):
        await queue.put(batch)
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return written, time.perf_counter() - began


async def synth_rollups(conn: asyncpg.Connection, backend: Backend, devices: list[Device], before: datetime,
                        days_1h: int, days_5m: int) -> dict[str, int]:
    """Rollup rows for the ``days`` before ``before``, generated in the database in time order (as a
    refresh would write them). On TimescaleDB they go into the continuous aggregates' own hypertables."""
    ids = [d.device_id for d in devices for _ in d.metrics]
    metrics = [m for d in devices for m in d.metrics]
    counts = {}
    for view, step, days in (("telemetry_1h", "1 hour", days_1h), ("telemetry_5m", "5 minutes", days_5m)):
        table = view
        if backend is Backend.TIMESCALEDB:
            row = await conn.fetchrow(
                "SELECT materialization_hypertable_schema AS s, materialization_hypertable_name AS n "
                "FROM timescaledb_information.continuous_aggregates WHERE view_name = $1", view)
            table = f'{row["s"]}."{row["n"]}"'
        began = before - timedelta(days=days)
        # a day at a time keeps each statement (and PGlite's memory) bounded
        for day in range(days):
            lo = began + timedelta(days=day)
            await conn.execute(
                f"INSERT INTO {table} (bucket, device_id, metric, avg, min, max, n) "
                "SELECT b, s.device_id, s.metric, v, v - 3, v + 3, $5::int "
                "FROM generate_series($1::timestamptz, $2::timestamptz - $6::interval, $6::interval) b "
                "CROSS JOIN LATERAL (SELECT device_id, metric, "
                "round((40 + 30 * sin(extract(epoch FROM b) / 86400 * 2 * pi()) + (hashtext(device_id || metric) % 20)"
                ")::numeric, 1)::float8 AS v FROM unnest($3::text[], $4::text[]) AS u(device_id, metric)) s",
                lo, lo + timedelta(days=1), ids, metrics, 5 if step == "5 minutes" else 60,
                timedelta(hours=1) if step == "1 hour" else timedelta(minutes=5))
        counts[view] = len(ids) * days * (24 if step == "1 hour" else 288)
    # the KPI rollups of that history (per district, kind and metric), as the refresh would have kept them
    # (TimescaleDB: after the day's refresh, see kpi_history_timescaledb: a hierarchical aggregate reads its
    # parent through the parent's watermark, which rows inserted here do not move)
    for kpi, days in (("kpi_1h", days_1h), ("kpi_5m", days_5m)) if backend is Backend.POSTGRES else ():
        for day in range(days):
            lo = before - timedelta(days=days - day)
            await recompute_kpis(conn, kpi, lo, lo + timedelta(days=1))
    # what autovacuum does to an insert-mostly table within minutes: index-only scans need it
    await conn.execute("VACUUM ANALYZE" if backend is Backend.POSTGRES else "ANALYZE")
    return counts


async def kpi_history_timescaledb(conn: asyncpg.Connection, before: datetime, days_1h: int, days_5m: int) -> None:
    """The KPI aggregates over the generated history (the parents' watermarks are past it by now)."""
    for kpi, days in (("kpi_1h", days_1h), ("kpi_5m", days_5m)):
        await conn.execute(f"CALL refresh_continuous_aggregate('{kpi}', $1::timestamptz, $2::timestamptz)",
                           before - timedelta(days=days), before)


async def timed(conn: asyncpg.Connection, runs: int, query: Callable[[int], Awaitable[Any]]) -> tuple[float, float]:
    """p50 and p95 in ms of ``runs`` calls (after one warm-up call)."""
    await query(-1)
    took = []
    for i in range(runs):
        began = time.perf_counter()
        await query(i)
        took.append((time.perf_counter() - began) * 1000)
    took.sort()
    return statistics.median(took), took[min(len(took) - 1, math.ceil(0.95 * len(took)) - 1)]


async def screens(conn: asyncpg.Connection, backend: Backend, devices: list[Device], history: list[Device],
                  day_end: datetime, runs: int, report: Report) -> None:
    """p50/p95 of the queries the screens make, ``now`` = the end of the loaded day; device charts for
    devices with a history of rollups."""
    rng = random.Random(3)
    picks = [rng.choice(history) for _ in range(runs + 1)]
    for name, span, width in CHARTS:
        async def chart(i: int, span: timedelta = span, width: timedelta = width) -> Any:
            return await queries.bucketed_points(conn, backend, picks[i].device_id, None, day_end - span, day_end,
                                                 width, 10_000)
        sample = await chart(0)
        p50, p95 = await timed(conn, runs, chart)
        report.add(f"{name} ({queries.source_for(width).value}, {len(sample)} rows)", _ms(p50, p95))

    async def kpis(i: int) -> Any:
        return await queries.kpi_history(conn, backend, day_end - timedelta(hours=4), day_end, timedelta(minutes=5))
    report.add("city KPIs, wall sparklines (4 h, 5 min)", _ms(*await timed(conn, runs, kpis)))

    # The Grafana per-district panels as provisioned, macros expanded as Grafana does for a 24-hour range
    panels = {p["title"]: p["targets"][0]["rawSql"] for b in all_dashboards() for p in b["panels"]}
    for title in ("Speed by district", "Availability by district", "Cells on battery (mains lost) by district",
                  "Traffic speed (city mean)"):
        sql = expand(panels[title], backend is Backend.TIMESCALEDB, day_end - timedelta(hours=24), day_end,
                     interval="5m", districts=DISTRICTS)

        async def panel(i: int, sql: str = sql) -> Any:
            return await conn.fetch(sql)
        rows = len(await panel(0))
        report.add(f"Grafana 24 h: {title} ({rows} rows)", _ms(*await timed(conn, runs, panel)))

    async def summary(i: int) -> Any:
        return await queries.recent_latest_values(conn, day_end - timedelta(minutes=15))
    report.add("summary seed: latest of every series (15 min)", _ms(*await timed(conn, max(3, runs // 5), summary)))


def _ms(p50: float, p95: float) -> str:
    flag = "" if p95 <= 200 else "  (over 200 ms)"
    return f"p50 {p50:7.1f} ms   p95 {p95:7.1f} ms{flag}"


async def register(conn: asyncpg.Connection, devices: list[Device], at: datetime) -> None:
    await conn.execute(
        "INSERT INTO devices (device_id, kind, first_seen, last_seen, district, state) "
        "SELECT i, k, $4, $4, d, 'online' FROM unnest($1::text[], $2::text[], $3::text[]) AS u(i, k, d) "
        "ON CONFLICT DO NOTHING", [d.device_id for d in devices], [d.kind for d in devices],
        [d.district for d in devices], at)


async def run_postgres(args: argparse.Namespace) -> Report:
    report = Report("postgres", args.scale)
    name = f"ioc_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(BASE_DSN)
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = BASE_DSN.rsplit("/", 1)[0] + f"/{name}"
    try:
        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(dsn)

        conn = await connect()
        config = StorageConfig(timescaledb="off")
        await upgrade(conn, config)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        day = today - timedelta(days=1)
        await ensure_partitions(conn, today.date(), 1, behind_days=1)
        await _common(args, report, conn, connect, Backend.POSTGRES, day)
        part = f"telemetry_p{day:%Y%m%d}"
        size = await conn.fetchval("SELECT pg_total_relation_size($1)", part)
        heap = await conn.fetchval("SELECT pg_relation_size($1)", part)
        rows = await conn.fetchval(f"SELECT count(*) FROM {part}")
        report.add("raw bytes per reading (heap + indexes)", f"{size / rows:.1f} B ({heap / rows:.1f} B heap); "
                   f"{size / 2**30:.2f} GiB for the day")
        for table in ("telemetry_5m", "telemetry_1h", "kpi_5m", "kpi_1h"):
            size = await conn.fetchval("SELECT pg_total_relation_size($1)", table)
            rows = await conn.fetchval(f"SELECT count(*) FROM {table}")
            report.add(f"{table} bytes per row (heap + indexes)", f"{size / rows:.1f} B ({rows:,} rows)")
        await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    return report


async def _common(args: argparse.Namespace, report: Report, conn: asyncpg.Connection,
                  connect: Callable[[], Awaitable[asyncpg.Connection]], backend: Backend, day: datetime) -> None:
    scale = args.scale if backend is Backend.POSTGRES else args.pglite_scale
    devices = province(scale)
    await register(conn, devices, day)
    seconds = int(args.hours * 3600)
    expected = readings_per_day(devices) * seconds // 86400
    report.add("devices / readings loaded", f"{len(devices):,} devices (scale {scale}), {expected:,} readings "
               f"over {args.hours:g} h")
    # the history first, so that rows lie on disk in the order a live system writes them
    began = time.perf_counter()
    history = devices[::max(1, round(1 / args.rollup_share))]
    counts = await synth_rollups(conn, backend, history, day, args.rollup_days if backend is Backend.POSTGRES
                                 else min(args.rollup_days, args.pglite_rollup_days), args.days_5m)
    report.add("history of rollups generated", f"{counts['telemetry_1h']:,} hourly + {counts['telemetry_5m']:,} "
               f"5-minute rows for {len(history):,} devices in {time.perf_counter() - began:.0f} s")
    if backend is Backend.POSTGRES:
        # the storage maintenance rebuilds the hourly rollup's index in device order weekly: here, last done
        # just before the loaded day (that day's hourly rows are scattered again, as a live system's are)
        await reorder_hourly(conn, backend, day - timedelta(days=7), 7)
        rebuilt = await reorder_hourly(conn, backend, day, 7)
        report.add("hourly rollup index rebuilt in device order", f"{rebuilt:.1f} s (weekly, by maintenance)")
    writers = args.writers if backend is Backend.POSTGRES else 1
    rows, took = await load(connect, backend, devices, day, seconds, writers, args.batch_rows)
    report.add(f"load rate ({writers} writers, {args.batch_rows}-row batches)",
               f"{rows / took:,.0f} readings/s ({rows:,} in {took:.0f} s)")
    day_end = day + timedelta(seconds=seconds)
    began = time.perf_counter()
    if backend is Backend.POSTGRES:
        await refresh_recent(conn, backend, day_end, timedelta(minutes=10))
    else:
        await refresh_rollups(conn, backend, day, day_end)
    report.add("rollup refresh of the loaded data", f"{time.perf_counter() - began:.1f} s")
    if backend is Backend.TIMESCALEDB:
        await kpi_history_timescaledb(conn, day, args.pglite_rollup_days, args.days_5m)
    if backend is Backend.POSTGRES:
        # live: 5 more minutes arrive, then the 5-minute refresh runs
        more, _ = await load(connect, backend, devices, day_end, 300, writers, args.batch_rows)
        began = time.perf_counter()
        await refresh_recent(conn, backend, day_end + timedelta(minutes=5), timedelta(minutes=10))
        report.add("incremental refresh after 5 more minutes", f"{(time.perf_counter() - began) * 1000:.0f} ms "
                   f"({more:,} new readings)")
        began = time.perf_counter()
        await refresh_rollups(conn, backend, day_end - timedelta(minutes=175), day_end + timedelta(minutes=5))
        report.add("old way: recompute the 180-min look-back", f"{(time.perf_counter() - began) * 1000:.0f} ms")
        await conn.execute("VACUUM ANALYZE telemetry_5m, telemetry_1h, kpi_5m, kpi_1h")  # autovacuum's work
        # Readers take the rollups up to complete_before and the raw rows after it: put it where it is just before
        # the next refresh (5-minute refresh + 1 minute in flight), so the screens pay for the longest raw tail.
        await conn.execute("UPDATE rollup_state SET complete_before = $1 WHERE name = 'telemetry'",
                           day_end - timedelta(minutes=6))
        report.add("raw tail read by the screens", "6 min (rollups complete up to 6 min before 'now')")
    await screens(conn, backend, devices, history, day_end, args.runs, report)


async def run_timescaledb(args: argparse.Namespace) -> Report:
    from tests.support.pglite_server import start_pglite

    report = Report("timescaledb (PGlite)", args.pglite_scale)
    with start_pglite(timeout=120) as server:
        async def connect() -> asyncpg.Connection:
            return await asyncpg.connect(server.dsn, **server.connect_kwargs)

        conn = await connect()
        await upgrade(conn, StorageConfig(timescaledb="auto"))
        day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
        await _common(args, report, conn, connect, Backend.TIMESCALEDB, day)
        rows = await conn.fetchval("SELECT count(*) FROM telemetry")
        before = await conn.fetchval("SELECT hypertable_size('telemetry')")
        began = time.perf_counter()
        await conn.execute("SELECT compress_chunk(c) FROM show_chunks('telemetry') c")
        took = time.perf_counter() - began
        after = await conn.fetchval("SELECT hypertable_size('telemetry')")
        report.add("raw bytes per reading, uncompressed", f"{before / rows:.1f} B ({rows:,} readings)")
        report.add("raw bytes per reading, compressed", f"{after / rows:.1f} B ({before / after:.0f}x, "
                   f"compress_chunk {took:.0f} s)")
        for view in ("telemetry_5m", "telemetry_1h", "kpi_5m", "kpi_1h"):
            table = await conn.fetchval(
                "SELECT format('%I.%I', materialization_hypertable_schema, materialization_hypertable_name) "
                "FROM timescaledb_information.continuous_aggregates WHERE view_name = $1", view)
            n = await conn.fetchval(f"SELECT count(*) FROM {table}")
            size = await conn.fetchval("SELECT hypertable_size($1::regclass)", table)
            if view.startswith("kpi_"):  # small: not compressed
                report.add(f"{view} bytes per row", f"{size / n:.1f} B ({n:,} rows)")
                continue
            await conn.execute(f"SELECT compress_chunk(c) FROM show_chunks('{table}') c")
            small = await conn.fetchval("SELECT hypertable_size($1::regclass)", table)
            report.add(f"{view} bytes per row, uncompressed / compressed", f"{size / n:.1f} B / {small / n:.1f} B "
                       f"({n:,} rows)")
        compressed = Report("timescaledb (PGlite), compressed", args.pglite_scale)
        devices = province(args.pglite_scale)
        await screens(conn, Backend.TIMESCALEDB, devices, devices[::max(1, round(1 / args.rollup_share))],
                      day + timedelta(hours=args.hours), args.runs, compressed)
        report.lines += ["  after compressing every chunk:", *compressed.lines]
        await conn.close()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["postgres", "timescaledb", "both"], default="both")
    parser.add_argument("--scale", type=float, default=0.1, help="share of a province's devices (PostgreSQL)")
    parser.add_argument("--pglite-scale", type=float, default=0.01, help="share of devices on PGlite (slow)")
    parser.add_argument("--hours", type=float, default=24, help="hours of readings loaded (a day: 24)")
    parser.add_argument("--rollup-days", type=int, default=365, help="days of hourly rollups before the day")
    parser.add_argument("--pglite-rollup-days", type=int, default=365)
    parser.add_argument("--rollup-share", type=float, default=1.0,
                        help="share of the loaded devices given that history (charts are drawn for those)")
    parser.add_argument("--days-5m", type=int, default=7, help="days of 5-minute rollups before the day")
    parser.add_argument("--writers", type=int, default=2, help="concurrent write connections (PostgreSQL)")
    parser.add_argument("--batch-rows", type=int, default=5000, help="readings per write transaction")
    parser.add_argument("--runs", type=int, default=40, help="timed runs of each query")
    args = parser.parse_args(argv)
    free = shutil.disk_usage("/").free
    need = readings_per_day(province(args.scale)) * args.hours / 24 * 140 + \
        sum(len(METRICS[k]) * n for k, (n, _) in PROVINCE.items()) * args.scale * args.rollup_share * (
            args.rollup_days * 24 + args.days_5m * 288) * 110
    print(f"free disk {free / 2**30:.0f} GiB; this run needs about {need / 2**30:.1f} GiB on PostgreSQL")
    if args.backend != "timescaledb" and need * 1.5 > free:
        raise SystemExit("not enough free disk for this scale: lower --scale or --rollup-days")
    reports = []
    if args.backend in ("postgres", "both"):
        reports.append(asyncio.run(run_postgres(args)))
    if args.backend in ("timescaledb", "both"):
        reports.append(asyncio.run(run_timescaledb(args)))
    for report in reports:
        print(f"\n== {report.backend}, scale {report.scale} ==")
        print("\n".join(report.lines))


if __name__ == "__main__":
    main()
