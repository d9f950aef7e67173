"""Numeric analytics on K workers over the real NATS JetStream and PostgreSQL.

Two workers share the partitions of a stream fairly; when one stops, the other takes its partitions over
and replays what had not been acknowledged; every reading is analysed; a district's devices always land in
one partition; learned state is saved per partition and restored by the next owner.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import asyncpg
import nats
import pytest

from ioc.partition.stream import Publisher, Row, ensure_stream, partition_of
from ioc.partition.worker import PartitionWorker, state_name

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
        for minute in range(10, 20):
            await pub.publish(rows(minute), msg_id=f"m{minute}")
        await until(lambda: a.processed + b.processed == 600, 20, "readings after the takeover analysed")

        conn = await asyncpg.connect(database_url)
        try:
            saved = {r["name"] for r in await conn.fetch(
                "SELECT name FROM analytics_state WHERE name LIKE $1", f"numeric:{stream}:%")}
        finally:
            await conn.close()
        with_data = {partition_of(r.district, PARTITIONS) for r in rows(0)}
        assert b_parts & with_data, "b held some of the districts"
        # what b learned, kept for its successor (a partition with no district in it has nothing to keep)
        assert saved >= {state_name(stream, p) for p in b_parts & with_data}
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
