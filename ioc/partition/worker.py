"""A numeric-analytics worker that owns some partitions of the reading stream (``ioc analytics-worker``).

Ownership is a PostgreSQL session advisory lock per partition, held on the worker's own connection: a
worker that dies (its connection closes) frees its partitions at once, and the others take them over on
their next rebalance (every ``rebalance_s``). Each worker also holds a member lock, so all of them can
count the members and take a fair share, ``ceil(partitions / members)``, giving back what is beyond it.

A partition's readings are read from a durable JetStream pull consumer named after the partition, so its
next owner resumes where the last acknowledgement stopped (a reading is acknowledged after its findings are
committed). Each partition has its own :class:`NumericMonitor`, whose learned state is saved per partition
(``analytics_state`` row ``numeric:<stream>:p<N>``) and restored by the next owner.

Findings are stored and published on ``<stream>.findings``, which the brain holding the lease reads
(:mod:`ioc.partition.findings`). Not done yet: a paused worker (SIGSTOP) keeps its locks until its
connection times out, so its writes are not fenced by an epoch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import zlib
from typing import Any

import asyncpg
import orjson

from analytics.findings import Finding
from analytics.numeric.monitor import NumericMonitor
from ioc.partition.findings import encode_findings, findings_subject
from ioc.partition.stream import STREAM, decode_rows, ensure_stream, subject
from storage.writes import FindingRow, load_state, save_state, write_findings

logger = logging.getLogger(__name__)

PARTITION_LOCK = 0x10C2  # advisory lock class: (PARTITION_LOCK, partition)
MEMBER_LOCK = 0x10C3  # advisory lock class: (MEMBER_LOCK, random member id)
ACK_WAIT_S = 10.0


def state_name(stream: str, partition: int) -> str:
    return f"numeric:{stream}:p{partition}"


class PartitionWorker:
    """Owns a fair share of the partitions and runs the numeric detectors on their readings."""

    def __init__(self, database_url: str, nats_url: str, partitions: int, worker_id: str, batch: int = 256,
                 rebalance_s: float = 2.0, state_every_s: float = 300.0, stream: str = STREAM,
                 ranges: dict[str, tuple[float, float]] | None = None) -> None:
        self.database_url, self.nats_url, self.stream = database_url, nats_url, stream
        self.ranges = ranges  # the deployment's declared metric ranges (IOC_ANALYTICS__METRIC_RANGES)
        self.partitions, self.worker_id, self.batch = partitions, worker_id, batch
        self.rebalance_s, self.state_every_s = rebalance_s, state_every_s
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.monitors: dict[int, NumericMonitor] = {}
        self.processed = 0
        self.findings = 0
        self._stopped = asyncio.Event()
        self._lock_conn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._js: Any = None
        # Lock classes per stream (two streams in one database never share partitions or members).
        tag = zlib.crc32(stream.encode()) & 0xFFFF
        self._lock_class, self._member_class = (PARTITION_LOCK << 16) | tag, (MEMBER_LOCK << 16) | tag

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        import nats

        nc = await nats.connect(self.nats_url, name=f"ioc-analytics-{self.worker_id}")
        self._js = nc.jetstream()
        await ensure_stream(self._js, self.stream)
        self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2)
        self._lock_conn = await asyncpg.connect(self.database_url)
        member = zlib.crc32(self.worker_id.encode()) & 0x7FFFFFFF
        await self._lock_conn.execute("SELECT pg_advisory_lock($1, $2)", self._member_class, member)
        logger.info("analytics worker %s up (%d partitions in the stream)", self.worker_id, self.partitions)
        # Workers starting together count each other before taking partitions (fewer hand-overs at start).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), self.rebalance_s)
        last_log = time.monotonic()
        try:
            while not self._stopped.is_set():
                try:
                    await self._rebalance()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                    # the lock connection is gone: its locks are too, so stop and let the others take over
                    logger.error("partition locks lost (%s); stopping this worker", err)
                    raise
                if time.monotonic() - last_log >= 10:
                    last_log = time.monotonic()
                    logger.info("partitions %s: %d readings analysed, %d findings", sorted(self.tasks),
                                self.processed, self.findings)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), self.rebalance_s)
        finally:
            for p in list(self.tasks):
                await self._release(p)
            await self._lock_conn.close()
            await self._pool.close()
            await nc.close()

    async def _rebalance(self) -> None:
        """Take free partitions up to a fair share; give back what is beyond it."""
        assert self._lock_conn is not None
        for p, task in list(self.tasks.items()):  # a consumer that failed is restarted by taking it again
            if task.done():
                logger.warning("partition %d consumer ended (%s); releasing it", p, task.exception())
                await self._release(p)
        members = await self._lock_conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())", self._member_class)
        fair = math.ceil(self.partitions / max(1, int(members)))
        while len(self.tasks) > fair:
            await self._release(max(self.tasks))
        if len(self.tasks) >= fair:
            return
        start = random.randrange(self.partitions)
        for k in range(self.partitions):
            p = (start + k) % self.partitions
            if p in self.tasks:
                continue
            if await self._lock_conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", self._lock_class, p):
                self.tasks[p] = asyncio.create_task(self._consume(p), name=f"partition-{p}")
                if len(self.tasks) >= fair:
                    return

    async def _release(self, p: int) -> None:
        assert self._lock_conn is not None and self._pool is not None
        task = self.tasks.pop(p)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        monitor = self.monitors.pop(p, None)
        if monitor is not None:
            await self._save(p, monitor)
        with contextlib.suppress(Exception):
            await self._lock_conn.execute("SELECT pg_advisory_unlock($1, $2)", self._lock_class, p)

    async def _save(self, p: int, monitor: NumericMonitor) -> None:
        assert self._pool is not None
        if not monitor.bank.size:
            return  # nothing learned (a partition with no district in it): nothing to keep
        try:
            state = await asyncio.to_thread(monitor.to_state)
            async with self._pool.acquire() as conn:
                await save_state(conn, state_name(self.stream, p), state)
        except Exception as err:
            logger.warning("partition %d: detector state not saved (%s)", p, err)

    async def _consume(self, p: int) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            saved = await load_state(conn, state_name(self.stream, p))
        monitor = NumericMonitor(ranges=self.ranges)
        if saved:
            try:
                monitor = NumericMonitor.from_state(saved, ranges=self.ranges)
            except Exception as err:  # a state this version cannot read: learn afresh rather than stop
                logger.warning("partition %d: saved detector state not restored (%s)", p, err)
                saved = None
        self.monitors[p] = monitor
        known: set[str] = set()
        logger.info("partition %d taken (%s)", p, "state restored" if saved else "learning afresh")
        from nats.js.api import ConsumerConfig

        # A batch delivered to a worker that then gave the partition away is redelivered after ack_wait.
        sub = await self._js.pull_subscribe(subject(self.stream, p), durable=f"{self.stream}-analytics-p{p}",
                                            stream=self.stream, config=ConsumerConfig(ack_wait=ACK_WAIT_S))
        try:
            await self._pump(p, monitor, sub, known)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _pump(self, p: int, monitor: NumericMonitor, sub: Any, known: set[str]) -> None:
        assert self._pool is not None
        last_save = time.monotonic()
        while True:
            try:
                msgs = await sub.fetch(self.batch, timeout=1.0)
            except TimeoutError:
                msgs = []
            if msgs:
                rows = [r for m in msgs for r in decode_rows(m.data)]
                for r in rows:
                    if r.device_id not in known:
                        known.add(r.device_id)
                        monitor.set_device(r.device_id, r.kind, r.district)
                found = await asyncio.to_thread(monitor.ingest, [(r.device_id, r.metric, r.ts, r.value) for r in rows])
                if found:
                    async with self._pool.acquire() as conn:
                        await write_findings(conn, [_row(f) for f in found])
                    # on to the alert brain (ioc/partition/findings.py), before the readings are acknowledged
                    await self._js.publish(findings_subject(self.stream), encode_findings(found), stream=self.stream)
                    self.findings += len(found)
                for m in msgs:  # after the findings are committed: a crash before this replays them
                    await m.ack()
                self.processed += len(rows)
            if time.monotonic() - last_save >= self.state_every_s:
                last_save = time.monotonic()
                await self._save(p, monitor)


def _row(f: Finding) -> FindingRow:
    return (f.ts, f.device_id, f.series, f.type, float(f.score), f.explanation,
            orjson.dumps(f.detail, option=orjson.OPT_SERIALIZE_NUMPY, default=str).decode())
