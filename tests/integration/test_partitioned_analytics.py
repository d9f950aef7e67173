"""Numeric analytics on K workers over the real NATS JetStream and PostgreSQL.

Two workers share the partitions of a stream fairly; when one stops, the other takes its partitions over
and replays what had not been acknowledged; every reading is analysed; a district's devices always land in
one partition; learned state is saved per partition and restored by the next owner. A paused worker
(SIGSTOP) loses its partitions to another and, woken up, writes nothing for them (epoch fence).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import nats
import pytest

from ioc.partition.stream import Publisher, Row, ensure_stream, partition_of
from ioc.partition.worker import PartitionWorker, lease_name, state_name

pytestmark = pytest.mark.integration

NATS_URL = "nats://127.0.0.1:4222"
PARTITIONS = 8


def rows(minute: int, districts: int = 6, per_district: int = 5) -> list[Row]:
    ts = 1_796_000_000.0 + 60 * minute
    return [Row(f"BTS-{d}-{k}", "bts", f"D{d}", "battery_pct", ts, 90.0 + k)
            for d in range(districts) for k in range(per_district)]


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)


async def test_two_workers_share_partitions_and_one_takes_over(database_url: str) -> None:
    stream = f"T{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, max_age_s=600)
    pub = Publisher(js, PARTITIONS, stream)
    a = PartitionWorker(database_url, NATS_URL, PARTITIONS, "a", rebalance_s=0.3, stream=stream)
    b = PartitionWorker(database_url, NATS_URL, PARTITIONS, "b", rebalance_s=0.3, stream=stream)
    runs = [asyncio.create_task(a.run()), asyncio.create_task(b.run())]
    try:
        await until(lambda: len(a.tasks) + len(b.tasks) == PARTITIONS and len(a.tasks) == len(b.tasks) == 4,
                    20, "a fair share each")
        assert not set(a.tasks) & set(b.tasks)
        for minute in range(10):
            await pub.publish(rows(minute), msg_id=f"m{minute}")
        await pub.publish(rows(9), msg_id="m9")  # a redelivered batch: stored once by JetStream
        await until(lambda: a.processed + b.processed == 300, 20, "all readings analysed once")

        b_parts = set(b.tasks)
        b.stop()  # b goes away (saves its partitions' state); a takes every partition over
        await asyncio.wait_for(runs[1], 20)
        await until(lambda: len(a.tasks) == PARTITIONS, 20, "a takes b's partitions")
        taken = b_parts & {partition_of(r.district, PARTITIONS) for r in rows(0)}
        await until(lambda: all(p in a.monitors for p in taken), 20, "a restores what b learned")
        for p in taken:  # b's devices come back with what they learned, before any new reading
            assert {r.device_id for r in rows(0) if partition_of(r.district, PARTITIONS) == p} <= set(
                a.monitors[p].table.device_idx)
        for minute in range(10, 20):
            await pub.publish(rows(minute), msg_id=f"m{minute}")
        await until(lambda: a.processed + b.processed == 600, 20, "readings after the takeover analysed")

        conn = await asyncpg.connect(database_url)
        try:
            saved = {r["scope"] for r in await conn.fetch(
                "SELECT DISTINCT scope FROM series_state WHERE scope LIKE $1", f"numeric:{stream}:%")}
            devices_saved = await conn.fetchval("SELECT count(*) FROM series_state WHERE scope = ANY($1::text[])",
                                                [state_name(stream, p) for p in b_parts])
        finally:
            await conn.close()
        with_data = {partition_of(r.district, PARTITIONS) for r in rows(0)}
        assert b_parts & with_data, "b held some of the districts"
        # what b learned, kept for its successor (a partition with no district in it has nothing to keep)
        assert saved >= {state_name(stream, p) for p in b_parts & with_data}
        # one row per device of b's partitions
        assert devices_saved == len({r.device_id for r in rows(0) if partition_of(r.district, PARTITIONS) in b_parts})
    finally:
        a.stop()
        b.stop()
        await asyncio.gather(*runs, return_exceptions=True)
        await js.delete_stream(stream)
        await nc.close()


def test_a_district_is_one_partition() -> None:
    """The domain rules judge districts as a whole: all of a district's devices share a partition."""
    assert len({partition_of(r.district, 32) for r in rows(0) if r.district == "D3"}) == 1


async def test_findings_reach_the_brain_through_the_stream() -> None:
    """What the partition workers find is read by the brain's durable consumer, also after a restart of it."""
    from datetime import UTC, datetime

    from analytics.findings import Finding
    from ioc.partition.findings import consume_findings, encode_findings, findings_subject

    stream = f"T{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, max_age_s=600)
    got: list[Finding] = []
    try:
        f1 = Finding("BTS-1", "battery_pct", datetime(2026, 12, 6, 8, tzinfo=UTC), "level_shift", 0.9,
                     "battery fell from 96 % to 40 %", {"expected": 96.0})
        await js.publish(findings_subject(stream), encode_findings([f1]), stream=stream)  # before the brain is up
        stop = asyncio.Event()
        task = asyncio.create_task(consume_findings(js, stream, got.extend, stop))
        await until(lambda: len(got) == 1, 10, "the finding queued before the brain started")
        stop.set()
        await task
        await js.publish(findings_subject(stream), encode_findings([f1, f1]), stream=stream)  # brain away
        stop = asyncio.Event()
        task = asyncio.create_task(consume_findings(js, stream, got.extend, stop))  # the next leader
        await until(lambda: len(got) == 3, 10, "findings raised during the failover")
        stop.set()
        await task
        assert got[0] == f1
    finally:
        await js.delete_stream(stream)
        await nc.close()


# A worker in its own process (so that it can be paused with SIGSTOP) that saves its partitions' state often:
# a paused worker that wrote after losing its partitions would show in the probe below at once.
_CHILD = """
import asyncio, logging, signal, sys
from ioc.partition.worker import PartitionWorker
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
async def main():
    w = PartitionWorker(sys.argv[1], sys.argv[2], int(sys.argv[3]), "paused", rebalance_s=0.3, state_every_s=0.3,
                        stream=sys.argv[4], lease_ttl_s=2.0)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, w.stop)
    await w.run()
asyncio.run(main())
"""


async def test_a_paused_worker_loses_its_partitions_and_writes_nothing_for_them(database_url: str,
                                                                               tmp_path: Path) -> None:
    """SIGSTOP a worker: another takes its partitions over (new epochs); SIGCONT: the paused one's writes are
    fenced. A trigger records, for every state write of this stream, the writer and the partition's owner at
    that moment: they must always be the same."""
    stream = f"T{uuid.uuid4().hex[:10]}"
    tag = uuid.uuid4().hex[:8]
    parts = 4
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, max_age_s=600)
    pub = Publisher(js, parts, stream)
    conn = await asyncpg.connect(database_url)
    prefix = f"numeric:{stream}:p"
    await conn.execute(f"""
        CREATE TABLE probe_{tag} (name text, writer text, owner text);
        CREATE FUNCTION probe_{tag}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
            IF left(NEW.scope, {len(prefix)}) = '{prefix}' THEN
                INSERT INTO probe_{tag} SELECT NEW.scope, current_setting('application_name'),
                    (SELECT holder FROM cluster_lease
                     WHERE name = 'partition:{stream}:' || substr(NEW.scope, {len(prefix) + 1}));
            END IF;
            RETURN NEW; END $$;
        CREATE TRIGGER probe_{tag} BEFORE INSERT OR UPDATE ON series_state
            FOR EACH ROW EXECUTE FUNCTION probe_{tag}();
    """)

    async def owners() -> list[str | None]:
        return [r["holder"] for r in await conn.fetch(
            "SELECT holder FROM cluster_lease WHERE name = ANY($1::text[]) AND expires_at > now()",
            [lease_name(stream, p) for p in range(parts)])]

    log = tmp_path / "paused.log"
    with log.open("wb") as out:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, database_url, NATS_URL, str(parts), stream],
                                 stdout=out, stderr=subprocess.STDOUT)
    b: PartitionWorker | None = None
    run_b: asyncio.Task[None] | None = None
    try:
        await until_async(lambda: _all_one(owners, parts), 30, "the first worker takes every partition")
        (paused,) = set(await owners())
        for minute in range(5):
            await pub.publish(rows(minute), msg_id=f"m{minute}")
        await until_async(lambda: _count(conn, f"SELECT count(*) FROM probe_{tag}"), 30, "its state is saved")

        child.send_signal(signal.SIGSTOP)
        b = PartitionWorker(database_url, NATS_URL, parts, "b", rebalance_s=0.3, stream=stream, lease_ttl_s=2.0)
        run_b = asyncio.create_task(b.run())
        await until(lambda: len(b.tasks) == parts, 30, "the other worker takes the paused one's partitions")
        assert paused not in await owners()
        for minute in range(5, 10):
            await pub.publish(rows(minute), msg_id=f"m{minute}")
        await until(lambda: b.processed >= 150, 40, "the readings after the pause analysed by the other worker")

        child.send_signal(signal.SIGCONT)  # it wakes up believing it owns every partition
        await asyncio.sleep(3.0)
        for minute in range(10, 12):
            await pub.publish(rows(minute), msg_id=f"m{minute}")
        await asyncio.sleep(2.0)
        child.send_signal(signal.SIGTERM)
        child.wait(30)
        b.stop()
        await asyncio.wait_for(run_b, 20)

        writes = [dict(r) for r in await conn.fetch(f"SELECT name, writer, owner FROM probe_{tag}")]
        assert writes, "the probe saw the state writes"
        stray = [w for w in writes if w["writer"] != f"ioc-analytics {w['owner']}"]
        assert not stray, f"written by a worker that did not own the partition: {stray}"
        assert any(w["writer"] == f"ioc-analytics {paused}" for w in writes)  # it did write while it owned them
        text = log.read_text()
        assert "lost" in text, text[-3000:]  # and it noticed that it lost them when it woke up
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGCONT)
            child.kill()
            child.wait(10)
        if b is not None:
            b.stop()
        if run_b is not None:
            await asyncio.gather(run_b, return_exceptions=True)
        await conn.execute(f"DROP TRIGGER IF EXISTS probe_{tag} ON series_state; DROP FUNCTION IF EXISTS "
                           f"probe_{tag}(); DROP TABLE IF EXISTS probe_{tag}")
        await conn.close()
        await js.delete_stream(stream)
        await nc.close()


async def _all_one(owners: Callable[[], Awaitable[list[str | None]]], parts: int) -> bool:
    held = await owners()
    return len(held) == parts and len(set(held)) == 1 and held[0] is not None


async def _count(conn: asyncpg.Connection, query: str) -> bool:
    return bool(await conn.fetchval(query))


async def until_async(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.1)
