"""A worker whose batches are of large messages under a short lease keeps its lease and learns each reading once
(real NATS JetStream and PostgreSQL).

A batch was 256 stream messages however many readings they held: 150 messages of 1,000 readings were one batch
of 150,000 readings, decoded on the event loop that renews the leases, which stalled for seconds (longer than a
2 s lease); a batch that outlasted the 10 s ack wait was delivered again while analysed and learned twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import asyncpg
import nats
import pytest

from ioc.partition.stream import encode_rows, ensure_stream, subject
from ioc.partition.worker import PartitionWorker, lease_name
from tests.integration.test_partition_exactly_once import _const, _learned, _settled, _step
from tests.integration.test_partitioned_analytics import NATS_URL, until_async

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # timing bounds: alone under xdist (tests/conftest.py)


async def _epoch(conn: asyncpg.Connection, stream: str) -> int:
    return int(await conn.fetchval("SELECT epoch FROM cluster_lease WHERE name = $1", lease_name(stream, 0)) or 0)


async def test_large_messages_under_a_short_lease_keep_the_lease_and_count_once(database_url: str) -> None:
    """A backlog of 150 messages of 1,000 readings (150,000) under a 2 s lease: one owner throughout."""
    steps, devices = 150, 1000
    stream = f"L{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, max_age_s=600)
    for step in range(steps):
        await js.publish(subject(stream, 0), encode_rows(_step(step, devices, mains=None)), stream=stream)
    conn = await asyncpg.connect(database_url)
    worker = PartitionWorker(database_url, NATS_URL, 1, "big", rebalance_s=1.0, lease_ttl_s=2.0, stream=stream)
    run = asyncio.create_task(worker.run())
    stalls = [0.0]
    probe = asyncio.create_task(_stall_probe(stalls))
    started = time.monotonic()
    try:
        await until_async(lambda: _const(0 in worker.tasks), 20, "the worker takes the partition")
        first = await _epoch(conn, stream)
        await until_async(lambda: _settled(js, stream), 25, "the backlog drained")
        drained = time.monotonic() - started
        worker.stop()
        await asyncio.wait_for(run, 20)
        epoch = await _epoch(conn, stream)
        learned = await _learned(conn, stream)
        print(f"large messages, 2 s lease: drained in {drained:.1f} s, lease epochs {first}..{epoch}, "
              f"longest stall of the event loop {stalls[0]:.2f} s, "
              f"counts {sorted(set(learned.values()))}")
        # before: one batch of 150,000 readings, decoded on the event loop, kept it from renewing the lease for
        # 4-6 s: the lease lapsed in the database (renewed again here only because no other worker took it)
        assert stalls[0] < 1.0, f"the lease was not renewed for {stalls[0]:.2f} s (renewals every 1 s, lease 2 s)"
        assert epoch == first, "the worker lost its own lease mid-batch"
        assert len(learned) == devices and set(learned.values()) == {steps}
    finally:
        probe.cancel()
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 20)
        await conn.close()
        await js.delete_stream(stream)
        await nc.close()


async def _stall_probe(longest: list[float]) -> None:
    """The longest time the event loop (the worker's: it runs in this test's loop) was kept from a timer."""
    while True:
        t = time.monotonic()
        await asyncio.sleep(0.02)
        longest[0] = max(longest[0], time.monotonic() - t - 0.02)


