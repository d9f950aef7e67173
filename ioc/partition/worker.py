"""A numeric-analytics worker that owns some partitions of the reading stream (``ioc analytics-worker``).

Ownership is a lease per partition in PostgreSQL (``cluster_lease`` row ``partition:<stream>:<N>``: owner,
epoch, expiry in the database's clock), renewed every ``rebalance_s`` for ``lease_ttl_s``. Each worker also
keeps a member row (``member:<stream>:<owner>``), so all of them can count the live members and take a fair
share, ``ceil(partitions / members)``, giving back what is beyond it. A worker that dies or is paused
(SIGSTOP) stops renewing: its partitions and its membership expire and the others take them over, each
takeover with a new epoch.

Every write of a partition (findings, learned state) starts its transaction with the fence
(:func:`storage.cluster.check_epoch`: the lease still names this worker with its epoch, row lock held to
the commit), so a worker that lost a partition can never write for it again; findings go to the brain only
after that commit, and readings are acknowledged only after it (or, for a batch that found nothing, while
the worker's own clock says the lease is still valid). A worker that finds a partition lost stops
processing it at once and saves nothing for it; one that gives a partition back lets the batch in hand end
first (commit and acks, its leases renewed meanwhile), so what it saves is exactly what was acknowledged.
A stream message that is not readings is set apart (``set_aside``, with its reason) and terminated on the
stream, so it cannot hold its partition.

A partition's readings are read from a durable JetStream pull consumer named after the partition. Every save
also writes the partition's position (replay.py): its next owner, or this worker after a failure mid-batch
(given back unsaved), learns again from the stream what the saved state has not, each reading once; a batch
is bounded by readings and time (``BATCH_ROWS``, ``BATCH_S``) and decoded off the event loop that renews the
leases (batch.py). Each partition has its own
:class:`NumericMonitor`, whose learned state is saved in the brain's two tiers (analytics/numeric/save_tiers.py):
every ``state_every_s`` (15 s) the devices with a consequential change, every other changed device once per
``full_every_s`` (300 s) at its own slot, and everything changed when the partition is given back; one
``series_state`` row per device under the scope ``numeric:<stream>:p<N>``, restored by the next owner (a
whole-partition ``analytics_state`` blob of an older version is read once). The group rules' episode memory
(analytics/numeric/episodes.py: which districts' group findings were already raised) is one
``analytics_state`` row per partition, written when it changes in the transaction of the findings that
changed it and with each pass, so a next owner does not raise an ongoing district episode again. A district
is one partition (stream.py), so its group finding is raised once, by the partition's owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from functools import partial
from typing import Any

import asyncpg
import orjson

from analytics.findings import Finding
from analytics.numeric import episodes, save_tiers
from analytics.numeric.device_state import encode_devices, restore_devices
from analytics.numeric.monitor import NumericMonitor
from ingest.errors import read_until_answered
from ioc.analytics_isolation import Isolation
from ioc.partition import replay
from ioc.partition.batch import Analysed, Aside, analyse
from ioc.partition.findings import encode_findings, findings_subject
from ioc.partition.stream import STREAM, ensure_stream, subject
from storage import cluster as sql
from storage.cluster import FencedError
from storage.set_aside import set_aside
from storage.writes import FindingRow, load_series_states, load_state, save_series_states, save_state

logger = logging.getLogger(__name__)

ACK_WAIT_S = 10.0
#: A partition given back finishes the batch in hand first (its commit and acks), for at most this long: what is
#: saved for the next owner is then exactly what was acknowledged (nothing learned twice, nothing left in flight).
GIVE_BACK_S = 5.0
#: The set_aside stage of stream messages that are not readings (kept with the reason, /api/set-aside).
SET_ASIDE_STAGE = "analytics-partition"
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)
#: Readings analysed in one batch at most, and at most what the last batches' pace analyses in ``BATCH_S`` (or a
#: quarter of the lease): the messages fetched follow from the readings per message seen. 256 messages of 600
#: readings were ~150,000 readings; decoded on the event loop they kept the lease from being renewed.
BATCH_ROWS = 20_000
BATCH_S = 1.0


def state_name(stream: str, partition: int) -> str:
    return f"numeric:{stream}:p{partition}"


async def _commit(conn: asyncpg.Connection, scope: str, findings: list[FindingRow] | None = None,
                  states: list[tuple[str, bytes]] | None = None, memory: episodes.Pending | None = None,
                  aside: list[Aside] | None = None, position: bytes | None = None) -> set[replay.FindingKey]:
    """The writes of one fenced transaction of a partition; returns the findings stored now (not before)."""
    for what, why, attempts, doc in aside or ():
        await set_aside(conn, SET_ASIDE_STAGE, what, why, attempts, doc)
    stored = await replay.store_findings(conn, findings) if findings else set()
    if states:
        await save_series_states(conn, scope, states)
    if memory is not None:
        await save_state(conn, episodes.state_name(scope), memory.data)
    if position is not None:  # with the states it describes
        await save_state(conn, replay.position_name(scope), position)
    return stored


def lease_name(stream: str, partition: int) -> str:
    """The ``cluster_lease`` row of a partition (owner, epoch)."""
    return f"partition:{stream}:{partition}"


class PartitionLost(Exception):
    """This worker no longer holds the partition (taken over, or its lease ran out on our clock)."""


class PartitionWorker:
    """Owns a fair share of the partitions and runs the numeric detectors on their readings.

    Args:
        lease_ttl_s: a partition not renewed for this long (a dead or paused worker) is taken over.
        state_every_s: how often the devices with a consequential change are saved (save_tiers.py).
        full_every_s: how often, at most, a device that only learned quietly is saved.
    """

    def __init__(self, database_url: str, nats_url: str, partitions: int, worker_id: str, batch: int = 256,
                 rebalance_s: float = 2.0, state_every_s: float = 15.0, stream: str = STREAM,
                 ranges: dict[str, tuple[float, float]] | None = None, lease_ttl_s: float = 10.0,
                 full_every_s: float = 300.0) -> None:
        if lease_ttl_s < 2 * rebalance_s:
            raise ValueError("lease_ttl_s must be at least twice rebalance_s (leases are renewed every rebalance)")
        self.database_url, self.nats_url, self.stream = database_url, nats_url, stream
        self.ranges = ranges  # the deployment's declared metric ranges (IOC_ANALYTICS__METRIC_RANGES)
        self.partitions, self.worker_id, self.batch = partitions, worker_id, batch
        self.rebalance_s, self.state_every_s, self.lease_ttl_s = rebalance_s, state_every_s, lease_ttl_s
        self.full_every_s = full_every_s
        self.holder = f"{worker_id}-{uuid.uuid4().hex[:8]}"  # unique per run: a restarted worker is a new owner
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.monitors: dict[int, NumericMonitor] = {}
        self.plans: dict[int, save_tiers.SavePlan] = {}  # partition -> when its quiet devices are due
        self.positions: dict[int, replay.Position] = {}  # partition -> what its saved state learned (replay.py)
        self._in_batch: set[int] = set()  # partitions whose detectors ran over a batch not yet committed and acked
        self.epochs: dict[int, int] = {}  # partition -> the epoch we hold it under
        self._valid_until: dict[int, float] = {}  # monotonic: past it we no longer trust we hold the partition
        self.processed = 0
        self.findings = 0
        self.fenced = 0  # writes refused because the partition had been taken over
        self.isolation = Isolation()  # devices whose readings make the detectors raise (ioc/analytics_isolation.py)
        self.dropped = 0  # their readings, not analysed
        self.set_apart = 0  # stream messages (or some of their items) that are not readings: kept in set_aside
        self._leaving: dict[int, asyncio.Task[None]] = {}  # given back: the pump ends its batch, then the save
        self._stopped = asyncio.Event()
        self._lease_conn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._js: Any = None
        self._member_prefix = f"member:{stream}:"

    def stop(self) -> None:
        self._stopped.set()

    def holds(self, p: int) -> bool:
        return p in self.epochs and time.monotonic() < self._valid_until.get(p, 0.0)

    async def run(self) -> None:
        import nats

        nc = await nats.connect(self.nats_url, name=f"ioc-analytics-{self.worker_id}")
        self._js = nc.jetstream()
        await ensure_stream(self._js, self.stream)
        app = {"application_name": f"ioc-analytics {self.holder}"[:63]}
        self._pool = await asyncpg.create_pool(self.database_url, min_size=1, max_size=2, server_settings=app)
        await self._beat()
        logger.info("analytics worker %s up (%d partitions in the stream)", self.holder, self.partitions)
        # Workers starting together count each other before taking partitions (fewer hand-overs at start).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), self.rebalance_s)
        last_log = time.monotonic()
        try:
            while not self._stopped.is_set():
                try:
                    await self._rebalance()
                except _DB_ERRORS as err:  # the leases stay ours until they expire: retry on a new connection
                    logger.warning("partition leases not renewed (%s); retrying", err)
                    await self._drop_conn()
                    for p in [p for p in self.tasks if not self.holds(p)]:
                        await self._release(p, "its lease ran out while the database was unreachable")
                if time.monotonic() - last_log >= 10:
                    last_log = time.monotonic()
                    logger.info("partitions %s: %d readings analysed, %d findings, %d messages set apart",
                                sorted(self.tasks), self.processed, self.findings, self.set_apart)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), self.rebalance_s)
        finally:
            for p in list(self.tasks):
                self._hand_back(p)
            while self._leaving:  # renewing the leases meanwhile: a big batch may outlast one
                await asyncio.wait(list(self._leaving.values()), timeout=self.rebalance_s)
                with contextlib.suppress(*_DB_ERRORS):
                    await self._renew()
            with contextlib.suppress(*_DB_ERRORS):
                await sql.member_leave(await self._conn(), self._member_prefix, self.holder)
            await self._drop_conn()
            await self._pool.close()
            await nc.close()

    async def _conn(self) -> asyncpg.Connection:
        """The lease connection (its own, never the pool's: a busy pool must not delay a renewal)."""
        if self._lease_conn is None or self._lease_conn.is_closed():
            self._lease_conn = await asyncpg.connect(
                self.database_url, timeout=5, command_timeout=max(2.0, self.rebalance_s),
                server_settings={"application_name": f"ioc-analytics-lease {self.holder}"[:63], "lock_timeout": "2000"})
        return self._lease_conn

    async def _drop_conn(self) -> None:
        conn, self._lease_conn = self._lease_conn, None
        if conn is not None:
            conn.terminate()

    async def _beat(self) -> int:
        return await sql.member_beat(await self._conn(), self._member_prefix, self.holder, self.lease_ttl_s)

    async def _rebalance(self) -> None:
        """Renew what we hold (stop what was taken over), then take free partitions up to a fair share."""
        conn = await self._conn()
        await self._renew()
        for p, task in list(self.tasks.items()):  # a consumer that failed is restarted by taking it again
            if task.done():  # gives it back (a fenced save, refused if it was taken over meanwhile)
                logger.warning("partition %d consumer ended (%r); releasing it", p, task.exception())
                await self._release(p)
        members = await self._beat()
        fair = math.ceil(self.partitions / max(1, members))
        for p in sorted(self.tasks)[fair:]:
            self._hand_back(p)
        if len(self.tasks) >= fair:
            return
        sent = time.monotonic()
        free = [lease_name(self.stream, p) for p in range(self.partitions) if p not in self.tasks
                and p not in self._leaving]
        taken = await sql.take_free(conn, free, self.holder, self.lease_ttl_s, fair - len(self.tasks))
        for name, epoch in taken.items():
            p = int(name.rsplit(":", 1)[1])
            self.epochs[p], self._valid_until[p] = epoch, sent + self.lease_ttl_s
            self.tasks[p] = asyncio.create_task(self._consume(p, epoch), name=f"partition-{p}")

    async def _renew(self) -> None:
        """Renew the leases we hold (those being given back too); stop what was taken over."""
        sent = time.monotonic()
        still = await sql.renew_held(await self._conn(), self.holder,
                                     {lease_name(self.stream, p): e for p, e in self.epochs.items()}, self.lease_ttl_s)
        for p in list(self.epochs):
            if lease_name(self.stream, p) in still:
                self._valid_until[p] = sent + self.lease_ttl_s
            else:
                await self._release(p, "taken over by another worker")

    def _hand_back(self, p: int) -> None:
        """Give ``p`` back in the background: the lease loop goes on renewing while its batch ends."""
        task = self.tasks.pop(p, None)
        if task is not None and p not in self._leaving:
            self._leaving[p] = asyncio.create_task(self._wind_down(p, task), name=f"give-back-{p}")

    async def _wind_down(self, p: int, task: asyncio.Task[None]) -> None:
        """Let the pump of ``p`` finish the batch in hand (commit and acks), then save and release it.

        Cancelled mid-batch, the save held readings not acknowledged yet (the next owner was given them again
        and learned them twice) and ran beside the detectors' thread still analysing them. A batch that does not
        end within ``GIVE_BACK_S`` (or while we still hold the lease) is cancelled and nothing is saved.
        """
        try:
            deadline = time.monotonic() + GIVE_BACK_S
            while not task.done() and self.holds(p) and time.monotonic() < deadline:
                await asyncio.wait({task}, timeout=0.05)
            if task.done():
                await self._release(p, task=task)
            else:
                await self._release(p, "its batch did not end while the lease was ours", task=task)
        finally:
            self._leaving.pop(p, None)

    async def _release(self, p: int, lost: str | None = None, task: asyncio.Task[None] | None = None) -> None:
        """Stop processing ``p`` (cancelling its pump); give it back (saving its state, fenced) unless ``lost``."""
        task = task or self.tasks.pop(p, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        monitor = self.monitors.pop(p, None)
        position = self.positions.pop(p, None)
        if p in self._in_batch:  # its pump ended after its detectors ran over a batch (its commit, publish or acks
            # failed): the batch is in the monitor, not in the saved position; learned again from the stream
            self._in_batch.discard(p)
            monitor = None
        self.plans.pop(p, None)
        epoch = self.epochs.pop(p, None)
        self._valid_until.pop(p, None)
        if lost is not None:
            logger.warning("partition %d (epoch %s) lost: %s; stopped without writing", p, epoch, lost)
            return
        if monitor is not None and epoch is not None and position is not None:
            await self._save(p, epoch, monitor, position=position)
        if epoch is not None:
            with contextlib.suppress(*_DB_ERRORS):
                await sql.release(await self._conn(), lease_name(self.stream, p), self.holder, epoch)

    async def _fenced(self, p: int, epoch: int, write: Any) -> Any:
        """Run ``write(conn)`` in a transaction that first checks we still hold ``p`` under ``epoch``.

        Raises:
            PartitionLost: the partition was taken over (nothing was written).
        """
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await sql.check_epoch(conn, lease_name(self.stream, p), self.holder, epoch)
                return await write(conn)
        except FencedError as err:
            self.fenced += 1
            self._valid_until[p] = 0.0
            raise PartitionLost(str(err)) from None

    async def _save(self, p: int, epoch: int, monitor: NumericMonitor, now: float | None = None,
                    position: replay.Position | None = None) -> None:
        """Write the devices that learned something since the last save (with ``now``, the monotonic time of a
        periodic pass: only those due then, ``self.plans``), one ``series_state`` row each (scope: the
        partition), and the partition's position (what those rows learned; ``self.positions`` unless given),
        inside the fenced transaction; a refused save keeps them marked for the next one."""
        # the pump awaits this (or has stopped): nothing else touches the monitor meanwhile
        position = position or self.positions[p]
        names, dirty = save_tiers.take(monitor, self.plans.get(p), now)
        memory = episodes.pending(monitor)
        index = monitor.table.device_idx
        doc, done = position.save([names[d] for d in dirty], lambda d: index.get(d) in monitor.dirty)
        if not dirty and memory is None and doc is None:
            return
        try:
            states = await asyncio.to_thread(encode_devices, monitor, [names[d] for d in sorted(dirty)])
            await self._fenced(p, epoch, partial(_commit, scope=state_name(self.stream, p), states=states,
                                                 memory=memory, position=doc))
            done()
            if memory is not None:
                episodes.done(memory)
        except asyncio.CancelledError:  # the partition is being given back: its hand-over save takes them
            save_tiers.untake(monitor, dirty)
            raise
        except Exception as err:  # PartitionLost included: the new owner has its own
            save_tiers.untake(monitor, dirty)
            logger.warning("partition %d: detector state not saved (%s)", p, err)

    async def _restore(self, p: int) -> tuple[NumericMonitor, replay.Position]:
        """The partition's learned state: its devices' rows, or a whole-partition blob saved by an older version
        (read once: the next save writes it per device), and the position they learned to (replay.py)."""
        monitor = NumericMonitor(ranges=self.ranges)
        name = state_name(self.stream, p)

        async def read() -> tuple[Any, bytes | None, bytes | None, bytes | None]:
            async with self._pool.acquire() as conn:  # type: ignore[union-attr]
                items = await load_series_states(conn, name)
                blob = None if items else await load_state(conn, name)
                return (items, blob, await load_state(conn, episodes.state_name(name)),
                        await load_state(conn, replay.position_name(name)))

        try:
            # while the database is away, wait: learning afresh would overwrite the saved state with the first saves
            items, blob, memory, doc = await read_until_answered(self._pool, read, f"partition {p}'s saved state")
            if items:
                restored = await asyncio.to_thread(restore_devices, monitor, items)
                logger.info("partition %d: state of %d of %d devices restored", p, restored, len(items))
            elif blob:
                monitor = NumericMonitor.from_state(blob, ranges=self.ranges)
            if memory:
                logger.info("partition %d: %d group episodes ongoing", p, episodes.restore(monitor, memory))
            return monitor, replay.Position.load(doc, bool(items or blob))
        except Exception as err:  # a state this version cannot read: learn afresh rather than stop
            logger.warning("partition %d: saved detector state not restored (%s)", p, err)
            return NumericMonitor(ranges=self.ranges), replay.Position(legacy=True)

    async def _subscribe(self, p: int, position: replay.Position) -> Any:
        """The partition's durable pull consumer, made again to start right after the saved position when its
        acknowledgements went past it or messages are in flight to a previous owner (replay.start_config)."""
        from nats.js.errors import NotFoundError

        durable = f"{self.stream}-analytics-p{p}"
        last = (await self._js.stream_info(self.stream)).state.last_seq
        if position.beyond(last):
            logger.warning("partition %d: saved position beyond the stream's last message %d (a new stream): "
                           "not used", p, last)
            position.forget()
        try:
            info = await self._js.consumer_info(self.stream, durable)
        except NotFoundError:
            info = None
        stale, config = replay.start_config(position, info, ACK_WAIT_S)
        if stale:
            logger.info("partition %d: learning again from stream message %d (acknowledged up to %d, %d in flight)",
                        p, position.floor + 1, info.ack_floor.stream_seq if info.ack_floor else 0,
                        info.num_ack_pending or 0)
            await self._js.delete_consumer(self.stream, durable)
        return await self._js.pull_subscribe(subject(self.stream, p), durable=durable, stream=self.stream,
                                             config=config)

    async def _consume(self, p: int, epoch: int) -> None:
        assert self._pool is not None
        monitor, position = await self._restore(p)
        self.monitors[p], self.positions[p] = monitor, position
        self.plans[p] = save_tiers.SavePlan(self.full_every_s)
        known: dict[str, str] = {}  # device -> the district (group) it was declared with
        logger.info("partition %d taken, epoch %d (%d series learned before)", p, epoch, monitor.bank.size)
        sub = await self._subscribe(p, position)
        try:
            await self._pump(p, epoch, monitor, position, sub, known)
        except PartitionLost as err:
            logger.warning("partition %d (epoch %d) lost: %s; stopped", p, epoch, err)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _pump(self, p: int, epoch: int, monitor: NumericMonitor, position: replay.Position, sub: Any,
                    known: dict[str, str]) -> None:
        last_save = time.monotonic()
        target_s = min(BATCH_S, self.lease_ttl_s / 4)
        budget, per_msg = float(BATCH_ROWS), BATCH_ROWS / 16  # readings per batch; per message (a guess at first)
        while p not in self._leaving:
            if not self.holds(p):
                raise PartitionLost("its lease ran out on this worker's clock (paused or cut off)")
            try:
                msgs = await sub.fetch(max(1, min(self.batch, int(budget / per_msg))), timeout=1.0)
            except TimeoutError:
                msgs = []
            if msgs:
                if not self.holds(p):  # woke up (SIGCONT) with a batch: leave it unacknowledged for the new owner
                    raise PartitionLost("its lease ran out on this worker's clock (paused or cut off)")
                started = time.monotonic()
                done = await asyncio.to_thread(analyse, p, msgs, monitor, known, position, self.isolation)
                # learned, not committed nor acknowledged: a failure from here on gives the partition back unsaved
                self._in_batch.add(p)
                position.applied(done.first, done.last, done.devices)
                per_msg = max(1.0, done.read / len(msgs))
                budget = min(BATCH_ROWS, max(100.0, done.read / max(time.monotonic() - started, 1e-3) * target_s))
                if done.failed:
                    self.dropped += sum(done.failed.values())
                    logger.warning("partition %d: detectors raised on %s; their readings were not analysed", p,
                                   ", ".join(sorted(done.failed)[:5]))
                await self._finish(p, epoch, monitor, position, msgs, done)
                self._in_batch.discard(p)
            if time.monotonic() - last_save >= self.state_every_s:
                last_save = time.monotonic()
                await self._save(p, epoch, monitor, now=last_save, position=position)

    async def _finish(self, p: int, epoch: int, monitor: NumericMonitor, position: replay.Position,
                      msgs: list[Any], done: Analysed) -> None:
        """Commit a batch's findings and set-apart items (fenced), send the findings stored now to the brain,
        acknowledge its messages."""
        if done.found or done.aside:
            # a group episode's start (or end) commits with the findings, and so does the state of the devices
            # that raised them (their episodes) with the position: a replay after a SIGKILL does not raise them
            # again (at other times: a rule's finding takes its batch's last reading time)
            memory = episodes.pending(monitor) if done.found else None
            index = monitor.table.device_idx
            names = sorted({f.device_id for f in done.found if f.device_id in index})
            taken = {index[d] for d in names}
            monitor.dirty -= taken  # learned up to this batch: saved here (a failure saves nothing: in_batch)
            monitor.urgent -= taken
            states = await asyncio.to_thread(encode_devices, monitor, names) if names else None
            doc, moved = position.save(names, lambda d: index.get(d) in monitor.dirty) if names else (None, None)
            stored = await self._fenced(p, epoch, partial(_commit, scope=state_name(self.stream, p),
                                                          aside=done.aside, memory=memory, states=states,
                                                          findings=[_row(f) for f in done.found], position=doc))
            if moved is not None:
                moved()
            if memory is not None:
                episodes.done(memory)
            self.set_apart += len(done.aside)
            # a finding raised again by a replay (stored before) is not sent again
            new = [f for f in done.found if replay.finding_key(f.ts, f.device_id, f.series, f.type) in stored]
            if new:  # on to the alert brain (ioc/partition/findings.py) after the fenced commit, before the acks
                await self._js.publish(findings_subject(self.stream), encode_findings(new), stream=self.stream)
                self.findings += len(new)
        elif not self.holds(p):
            raise PartitionLost("its lease ran out while the batch was analysed")
        for m in msgs:  # after the findings are committed: a crash before this replays them
            # a message that is no readings at all is kept in set_aside: never delivered again
            await (m.term() if id(m) in done.poison else m.ack())
        self.processed += done.learned


def _row(f: Finding) -> FindingRow:
    return (f.ts, f.device_id, f.series, f.type, float(f.score), f.explanation,
            orjson.dumps(f.detail, option=orjson.OPT_SERIALIZE_NUMPY, default=str).decode())
