"""A partition worker keeps analysing when one device's readings make the numeric detectors raise (real NATS).

Found by H4: readings of ±1e308 on a metric without a declared range make the detectors raise; in a partition
worker the whole batch raised, was never acknowledged, came back after ack_wait and raised again, for ever:
every device of that partition lost its analysis. Now that device is set apart and the batch is acknowledged.
"""

from __future__ import annotations

import asyncio
import uuid

import nats
import pytest

from analytics.numeric import kernel
from ioc.partition.stream import Publisher, Row, ensure_stream
from ioc.partition.worker import PartitionWorker
from tests.integration.test_partitioned_analytics import NATS_URL, until

pytestmark = pytest.mark.integration


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
async def test_one_device_that_trips_the_detectors_does_not_stop_its_partition(database_url: str) -> None:
    stream = f"H{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, max_age_s=600)
    pub = Publisher(js, 1, stream)
    worker = PartitionWorker(database_url, NATS_URL, 1, "h", rebalance_s=0.3, stream=stream)
    run = asyncio.create_task(worker.run())
    try:
        await until(lambda: 0 in worker.tasks, 20, "the partition taken")
        t0 = 1_796_000_000.0
        for minute in range(10):
            ts = t0 + 60 * minute
            batch = [Row("BTS-huge", "bts", "D1", "flow_x", ts, 1e308 if minute % 2 else -1e308)]
            batch += [Row(f"BTS-good-{k}", "bts", "D1", "flow_x", ts, 100.0 + k + minute) for k in range(4)]
            await pub.publish(batch, msg_id=f"m{minute}")
        await until(lambda: worker.processed == 50, 30, "every batch analysed and acknowledged")
        monitor = worker.monitors[0]
        keys, F = monitor.table.keys, monitor.bank.F
        for k in range(4):
            # every good reading learned; those of the batch the device first raised in may be learned twice (the
            # detectors changed state before they raised and have no rollback: analytics/numeric's to fix)
            assert 10 <= F[keys[(f"BTS-good-{k}", "flow_x")], kernel.N] <= 11
        assert worker.dropped <= 10  # at most the hostile device's own readings
    finally:
        worker.stop()
        await asyncio.gather(run, return_exceptions=True)
        await js.delete_stream(stream)
        await nc.close()
