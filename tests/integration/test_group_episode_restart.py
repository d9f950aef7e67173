"""A district outage is one group finding across a SIGKILL and a hand-over of its partition (real NATS JetStream
and PostgreSQL, the first worker in its own process).

Three BTS of a district lose mains: the partition's worker raises one ``group_outage``. It is SIGKILLed right
after (no periodic save has run: only the findings' transaction wrote the episode memory); the next owner
and, after a clean hand-over, the one after it go on seeing the same outage and raise nothing. Once mains
has been back for over four rule windows the episode ends (saved by a hand-over), and the next outage is a
new group finding. The brain's own detectors (no partition workers) keep it across a restart the same way.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import nats
import pytest

from analytics.findings import Finding
from analytics.numeric import episodes
from ingest.records import ParsedMessage, Reading
from ioc.analytics_stage import AnalyticsStage
from ioc.live.hub import LiveHub
from ioc.partition.findings import consume_findings
from ioc.partition.stream import Publisher, Row, ensure_stream
from ioc.partition.worker import PartitionWorker, lease_name, state_name
from storage.config import StorageConfig
from storage.db import create_pool
from tests.integration.test_partitioned_analytics import NATS_URL, until, until_async

pytestmark = pytest.mark.integration

T0 = 1_796_000_000.0
STEP = 300.0

# no periodic save for an hour: what the next owner finds was written with the findings
_CHILD = """
import asyncio, logging, sys
from ioc.partition.worker import PartitionWorker
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
w = PartitionWorker(sys.argv[1], sys.argv[2], 1, "killed", rebalance_s=0.3, state_every_s=3600.0,
                    stream=sys.argv[3], lease_ttl_s=2.0)
asyncio.run(w.run())
"""


async def test_a_district_outage_is_raised_once_across_a_sigkill_and_a_hand_over(database_url: str,
                                                                                 tmp_path: Path) -> None:
    stream = f"T{uuid.uuid4().hex[:10]}"
    tag = uuid.uuid4().hex[:6]
    district = f"D{tag}"
    devices = [f"B{tag}-{j}" for j in range(4)]
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, max_age_s=600)
    pub = Publisher(js, 1, stream)
    conn = await asyncpg.connect(database_url)
    scope = state_name(stream, 0)
    found: list[Finding] = []
    stop_findings = asyncio.Event()
    reader = asyncio.create_task(consume_findings(js, stream, found.extend, stop_findings))

    def groups() -> list[Finding]:
        return [f for f in found if f.type == "group_outage"]

    async def publish(steps: range, off: int) -> int:
        for i in steps:  # one message per step: readings of a step analysed together, in order
            await pub.publish([Row(d, "bts", district, "mains_power", T0 + STEP * i, 0.0 if j < off else 1.0)
                               for j, d in enumerate(devices)])
        return len(steps) * len(devices)

    async def settled() -> bool:
        info = await js.consumer_info(stream, f"{stream}-analytics-p0")
        return info.num_pending == 0 and info.num_ack_pending == 0

    async def start(name: str) -> tuple[PartitionWorker, asyncio.Task[None]]:
        w = PartitionWorker(database_url, NATS_URL, 1, name, rebalance_s=0.3, state_every_s=0.5, stream=stream,
                            lease_ttl_s=2.0)
        task = asyncio.create_task(w.run())
        await until(lambda: 0 in w.monitors, 30, f"{name} takes the partition")
        return w, task

    log = tmp_path / "killed.log"
    with log.open("wb") as out:
        child = subprocess.Popen([sys.executable, "-c", _CHILD, database_url, NATS_URL, stream],
                                 stdout=out, stderr=subprocess.STDOUT)
    workers: list[tuple[PartitionWorker, asyncio.Task[None]]] = []
    try:
        await until_async(lambda: _held(conn, lease_name(stream, 0)), 30, "the first worker takes the partition")
        await publish(range(0, 5), off=0)
        await publish(range(5, 8), off=3)
        await until(lambda: len(groups()) == 1, 30, "the district outage raised")
        await until_async(settled, 10, "every reading acknowledged")
        memory = await conn.fetchval("SELECT state FROM analytics_state WHERE name = $1", episodes.state_name(scope))
        assert memory is not None and district.encode() in memory, "committed with the finding"
        # no periodic save ran: the memory came with the findings (as did the state of the devices that raised
        # them, ioc/partition/replay.py), the device still on mains is not saved
        saved = {r["device_id"] for r in await conn.fetch("SELECT device_id FROM series_state WHERE scope = $1",
                                                          scope)}
        assert saved <= set(devices[:3]), "no periodic save ran: the memory came with the findings"
        child.send_signal(signal.SIGKILL)
        child.wait(10)

        b, run_b = await start("b")  # after the killed worker's lease expired
        workers.append((b, run_b))
        assert b.monitors[0].rules.group_active, "the ongoing episode restored"
        n = await publish(range(8, 12), off=3)
        await until(lambda: b.processed >= n, 30, "the outage goes on at b")
        b.stop()  # a clean hand-over: everything saved
        await asyncio.wait_for(run_b, 20)

        c, run_c = await start("c")
        workers.append((c, run_c))
        n = await publish(range(12, 14), off=3)
        n += await publish(range(14, 30), off=0)  # mains back for 80 minutes: over four rule windows
        await until(lambda: c.processed >= n, 30, "the outage and its end analysed at c")
        assert not c.monitors[0].rules.group_active, "the episode is over"
        await asyncio.sleep(1.0)  # the stream's findings of c's batches reach the reader
        assert len(groups()) == 1, [f.explanation for f in groups()]
        c.stop()
        await asyncio.wait_for(run_c, 20)

        d, run_d = await start("d")
        workers.append((d, run_d))
        n = await publish(range(30, 33), off=3)  # a new outage
        await until(lambda: d.processed >= n, 30, "the new outage analysed at d")
        await until(lambda: len(groups()) == 2, 10, "the new outage raised")
        await asyncio.sleep(1.0)
        assert len(groups()) == 2
        first, second = (f.ts.timestamp() for f in groups())  # stamped with the last reading of its batch
        assert T0 + STEP * 5 <= first <= T0 + STEP * 7 and T0 + STEP * 30 <= second <= T0 + STEP * 32
        stored = await conn.fetchval("SELECT count(*) FROM findings WHERE device_id = $1 AND type = 'group_outage'",
                                     f"group:{district}")
        assert stored == 2
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        for w, task in workers:
            w.stop()
            await asyncio.gather(task, return_exceptions=True)
        stop_findings.set()
        await asyncio.gather(reader, return_exceptions=True)
        await conn.execute("DELETE FROM series_state WHERE scope = $1", scope)
        await conn.execute("DELETE FROM analytics_state WHERE name = $1", episodes.state_name(scope))
        await conn.execute("DELETE FROM findings WHERE device_id = ANY($1::text[])",
                           [*devices, f"group:{district}"])
        await conn.close()
        await js.delete_stream(stream)
        await nc.close()


async def _held(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT holder IS NOT NULL FROM cluster_lease WHERE name = $1 "
                                    "AND expires_at > now()", name))


async def test_the_brain_keeps_its_group_episodes_across_a_restart(database_url: str) -> None:
    """The brain's own numeric detectors (no partition workers): the episode memory goes with its periodic
    pass; a leader that starts after that pass does not raise the ongoing outage again, the next one it does."""
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    tag = uuid.uuid4().hex[:8]
    scope, district = f"numeric-{tag}", f"D{tag}"
    devices = [f"B{tag}-{j}" for j in range(4)]
    start = datetime.now(UTC) - timedelta(days=1)

    def leader() -> AnalyticsStage:
        stage = AnalyticsStage(LiveHub(), pool, camera_processes=0)
        stage.series_scope = scope
        for d in devices:  # as the registry places them
            stage.monitor.set_device(d, "bts", district)
        return stage

    def feed(stage: AnalyticsStage, steps: range, off: int) -> list[Finding]:
        found: list[Finding] = []
        stage.on_findings = found.extend
        for i in steps:
            ts = start + timedelta(seconds=STEP * i)
            stage.on_parsed(ParsedMessage([Reading(d, "bts", ts, {"mains_power": 0.0 if j < off else 1.0})
                                           for j, d in enumerate(devices)], []))
            stage.step(ts)
        return [f for f in found if f.type == "group_outage"]

    try:
        first = leader()
        assert feed(first, range(0, 5), off=0) == []
        assert len(feed(first, range(5, 8), off=3)) == 1
        await first.save(cameras=False, now=15.0)  # a periodic pass; then the leader is killed
        first.close()

        second = leader()
        await second.load()
        assert feed(second, range(8, 12), off=3) == [], "the ongoing outage is not raised again"
        assert feed(second, range(12, 30), off=0) == []
        await second.save(cameras=False, now=15.0)  # the episode's end, saved by the pass
        second.close()

        third = leader()
        await third.load()
        assert not third.monitor.rules.group_active
        assert len(feed(third, range(30, 33), off=3)) == 1, "a new outage"
        third.close()
    finally:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM series_state WHERE scope = $1", scope)
            await conn.execute("DELETE FROM analytics_state WHERE name = $1", episodes.state_name(scope))
        await pool.close()


async def test_a_device_placed_later_joins_its_district_in_the_same_partition(database_url: str) -> None:
    """A device first seen without a district (keyed by its own id) whose district then lands in the same
    partition joins that district's group there, without a restart."""
    stream = f"T{uuid.uuid4().hex[:10]}"
    tag = uuid.uuid4().hex[:6]
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, max_age_s=600)
    pub = Publisher(js, 1, stream)  # one partition: both keys fall in it
    w = PartitionWorker(database_url, NATS_URL, 1, "placed", rebalance_s=0.3, stream=stream, lease_ttl_s=2.0)
    run = asyncio.create_task(w.run())
    dev = f"B{tag}"
    try:
        await until(lambda: 0 in w.monitors, 30, "the worker takes the partition")
        await pub.publish([Row(dev, "bts", "", "mains_power", T0, 1.0)])
        await pub.publish([Row(dev, "bts", f"D{tag}", "mains_power", T0 + STEP, 1.0)])
        await pub.publish([Row(dev, "bts", "", "mains_power", T0 + 2 * STEP, 1.0)])  # its place forgotten
        await until(lambda: w.processed >= 3, 30, "the readings analysed")
        table = w.monitors[0].table
        assert table.group_name(table.device_group[table.device_idx[dev]]) == f"D{tag}"
    finally:
        w.stop()
        await asyncio.gather(run, return_exceptions=True)
        conn = await asyncpg.connect(database_url)
        await conn.execute("DELETE FROM series_state WHERE scope = $1", state_name(stream, 0))
        await conn.close()
        await js.delete_stream(stream)
        await nc.close()
