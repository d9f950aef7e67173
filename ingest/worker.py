"""The ingest worker: MQTT session -> parse -> batches -> one transaction each -> ack in order.

Guarantees:
* a QoS 1 message is acked only after the transaction holding its rows (or its quarantine row) commits;
* at most ``max_pending_messages`` unacknowledged messages are held; beyond that the socket is not read;
* database outages are retried with backoff forever; data the database refuses is bisected down to the
  single message, which is quarantined with the database's reason;
* redeliveries are harmless: every insert is idempotent (see :mod:`storage.writes`);
* with an ack gate (:mod:`ingest.ack_gate`: the brain's stages in embedded mode) a message is acked only once
  they have also stored what it caused; input they had to drop is sent again by the broker (a reconnection).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import paho.mqtt.client as mqtt

from ingest import metrics as m
from ingest.ack_gate import AckGate
from ingest.backoff import Backoff
from ingest.batch import Batch, Pending, RegistryCache, build_rows, quarantine_row
from ingest.config import IngestConfig
from ingest.contract import CHANNELS
from ingest.device_rate import DeviceRate
from ingest.errors import UNKNOWN_ERROR_RETRIES, Failure, judge, terminate_unless_server_error
from ingest.guard import MetricNameGuard
from ingest.handling import ParsedSink, handle_message
from ingest.kinds import DeviceKinds
from ingest.latest import LatestValues
from ingest.members import Membership, share_group
from ingest.mqtt_session import MqttSession, SessionOptions
from ingest.quarantine_budget import QuarantineBudget
from ingest.records import ParsedMessage, Reading, Reason, Rejection
from ingest.text import clean_text
from storage.config import StorageConfig
from storage.db import Backend, SchemaNotReady, create_pool, read_backend
from storage.kinds import claim_kinds
from storage.maintenance import run_maintenance
from storage.rollups import refresh_recent
from storage.writes import BatchRows, write_batch

logger = logging.getLogger(__name__)
errors = m.RateLimitedLog(logger)



#: Young-generation collections between two full garbage collections (Python's default: 10). Every message
#: held until its batch commits (up to ``max_pending_messages``) outlives the young collections, so at a full
#: drain the objects promoted made Python run a full collection every ~6,000 messages, each traversing
#: everything the process holds: 15 of them per 100,000 messages, about a fifth of the worker's CPU
#: (1.1 of 6.3 s, benchmarks.ingest_bench). The worker makes almost no cyclic garbage (its largest source,
#: paho's topic matcher, is gone: ingest/paho_speedups.py), so full collections every 100 are enough.
GC_FULL_EVERY = 100
#: With an ack gate: how often the acks held for the stages are looked at again (as the brain's ACK_EVERY_S).
GATE_EVERY_S = 0.25


class IngestWorker:
    """One ingest worker process' pipeline (several may share a subscription group).

    Args:
        database_url: PostgreSQL DSN.
        session: MQTT session options (subscriptions already include any ``$share/`` prefix).
        config: batching and flow control.
        storage: storage settings (pool size, maintenance).
        sinks: called on the event loop with every parsed message, before commit (live feed, analytics).
        maintenance_interval_s: how often to run storage housekeeping; None disables it.
    """

    def __init__(self, database_url: str, session: SessionOptions, config: IngestConfig,
                 storage: StorageConfig, sinks: tuple[ParsedSink, ...] = (),
                 maintenance_interval_s: float | None = 3600.0) -> None:
        self.database_url = database_url
        self.config = config
        self.storage = storage
        self.sinks = sinks
        self.maintenance_interval_s = maintenance_interval_s
        self.session = MqttSession(session, self._on_message, self._on_connection_change)
        self.registry = RegistryCache(config.registry_touch_s)
        self.guard = MetricNameGuard()
        self.rate = DeviceRate(config.device_bytes_per_s, config.device_burst_bytes)
        # the workers of a share group split each device's share (ingest/members.py)
        self.members = Membership(share_group(session.subscriptions), session.client_id, self.rate)
        self.kinds = DeviceKinds()  # the registry's kinds: a known device's message under another is refused
        self.quarantine_budget = QuarantineBudget(config.quarantine_bytes_per_device_min)
        self.latest = LatestValues()
        #: Awaited with each committed batch's messages before they are acked (the analytics stream).
        self.after_commit: Callable[[list[ParsedMessage]], Awaitable[None]] | None = None
        #: Set before :meth:`run`: acks also wait for the stages the sinks feed (:mod:`ingest.ack_gate`).
        self.gate: AckGate | None = None
        self._pool: asyncpg.Pool | None = None
        self._open = Batch()
        self._open_since = 0.0
        self._sealed: asyncio.Queue[Batch] = asyncio.Queue()
        self._order: deque[Batch] = deque()
        self._order_seq: deque[int] = deque()  # the gate's sequence of each batch's last message
        self._pending = 0
        self._pending_bytes = 0  # payload bytes of the unacked messages
        self._flush_handle: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        self.ready = asyncio.Event()
        self._progress_at = time.monotonic()  # last time the queue was empty or a batch was acknowledged
        self._paused_at: float | None = None
        self._disconnected_at: float | None = time.monotonic()
        self.last_db_error: str | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop`: wait for the database, then consume. Sets the process's garbage collector to
        run full collections less often (:data:`GC_FULL_EVERY`)."""
        young, middle, full = gc.get_threshold()
        gc.set_threshold(young, middle, max(full, GC_FULL_EVERY))
        self._pool = await self._open_pool()
        tasks = [asyncio.create_task(self._writer(i), name=f"ingest-writer-{i}")
                 for i in range(self.config.writers)]
        tasks.append(asyncio.create_task(self._latest_loop(), name="ingest-latest"))
        tasks.append(asyncio.create_task(self.kinds.run(self._pool), name="ingest-kinds"))
        tasks.append(asyncio.create_task(self.members.run(self._pool), name="ingest-members"))
        if self.maintenance_interval_s:
            tasks.append(asyncio.create_task(self._maintenance_loop(), name="ingest-maintenance"))
            tasks.append(asyncio.create_task(self._rollup_loop(), name="ingest-rollups"))
        if self.gate is not None:
            tasks.append(asyncio.create_task(self._gate_loop(self.gate), name="ingest-ack-gate"))
        session_task = asyncio.create_task(self.session.run(), name="mqtt-session")
        self.ready.set()
        try:
            await self._stopped.wait()
        finally:
            await self._drain(timeout=10.0)
            await self._write_latest()
            await self.session.stop()
            session_task.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(session_task, *tasks, return_exceptions=True)
            await self._pool.close()

    def stop(self) -> None:
        """Ask :meth:`run` to finish: flush what is pending, ack it, disconnect."""
        self._stopped.set()

    async def _open_pool(self) -> asyncpg.Pool:
        backoff = Backoff(self.config.retry_min_s, self.config.retry_max_s)
        while True:
            try:
                pool = await create_pool(self.database_url, self.storage,
                                         staging=self.config.write_method == "copy",
                                         max_size=self.config.writers + 1)
                async with pool.acquire() as conn:
                    backend = await read_backend(conn)
                    await self.kinds.load(conn)  # before the first message: a known device's kind is fixed
                logger.info("database ready (%s backend, %s writes)", backend.value, self.config.write_method)
                return pool
            except SchemaNotReady:
                logger.error("database has no IOC schema yet; run `ioc db upgrade` (retrying)")
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                delay = backoff.next_delay()
                logger.warning("database not reachable (%s); retrying in %.1fs", err, delay)
                await asyncio.sleep(delay)
                continue
            await backoff.sleep()

    async def _drain(self, timeout: float) -> None:
        """On shutdown: stop reading, seal the open batch, wait for commits and acks."""
        self.session.pause_reading("shutdown")
        self._seal()
        deadline = time.monotonic() + timeout
        while self._order and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._order:
            logger.warning("shutdown with %d messages uncommitted; the broker will redeliver them", self._pending)

    # --- receive -------------------------------------------------------------------------------------

    def _on_message(self, message: mqtt.MQTTMessage, generation: int) -> None:
        received_at = datetime.now(UTC)
        gate = self.gate
        if gate is not None:  # before the sinks: the stages read its sequence and DUP flag as this message's
            gate.received(bool(message.dup))
        parsed = handle_message(message, received_at, self.guard, self.sinks, kinds=self.kinds, rate=self.rate)
        if parsed.rejections:
            self.quarantine_budget.apply(parsed.rejections, self.config.quarantine_payload_bytes)
        channel = _channel_label(message._topic)
        if not self._open.messages:
            self._open_since = time.monotonic()
            self._flush_handle = asyncio.get_running_loop().call_later(
                self.config.batch_max_delay_ms / 1000, self._seal)
        size = len(message.payload)
        self._open.messages.append(Pending(message.mid, message.qos, generation, channel, received_at, parsed, size))
        self._pending += 1
        self._pending_bytes += size
        if len(self._open.messages) >= self.config.batch_max_messages:
            self._seal()
        full = self._pending >= self._limit() or self._pending_bytes >= self.config.max_pending_bytes
        if full or (gate is not None and gate.hold()):
            self.session.pause_reading("back-pressure" if full else "stages full")
            self._paused_at = self._paused_at or time.monotonic()
            m.PAUSED.set(1)

    def _limit(self) -> int:
        """Unacked messages at most: the configured bound, or the gate's window after a redelivery."""
        bound = self.config.max_pending_messages
        return bound if self.gate is None else min(bound, self.gate.window)

    def _seal(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._open.messages:
            # Per-batch, not per-message, metric updates: they cost microseconds each on the hot path.
            per_channel: dict[str, int] = {}
            for msg in self._open.messages:
                per_channel[msg.channel] = per_channel.get(msg.channel, 0) + 1
            for channel, count in per_channel.items():
                m.received(channel).inc(count)
            m.PENDING.set(self._pending)
            batch, self._open = self._open, Batch()
            self._order.append(batch)
            self._order_seq.append(self.gate.seq if self.gate is not None else 0)
            self._sealed.put_nowait(batch)

    def _on_connection_change(self, connected: bool) -> None:
        m.MQTT_CONNECTED.set(1 if connected else 0)
        self._disconnected_at = None if connected else (self._disconnected_at or time.monotonic())

    def health_problems(self) -> list[str]:
        """What stops this worker from making progress (empty: healthy). Feeds /readyz and the wall."""
        now, stall = time.monotonic(), self.config.stall_s
        problems = []
        if self._pending == 0:
            self._progress_at = now  # nothing waiting is not a stall
        elif now - self._progress_at > stall:
            why = f"; last database error: {self.last_db_error}" if self.last_db_error else ""
            problems.append(f"ingest: {self._pending} messages received, none committed for "
                            f"{now - self._progress_at:.0f} s{why}")
        if self._disconnected_at is not None and now - self._disconnected_at > stall:
            problems.append(f"ingest: MQTT broker link down for {now - self._disconnected_at:.0f} s")
        refused = ", ".join(self.session.refused_subscriptions)
        if refused:
            problems.append(f"ingest: the broker refused the subscription ({refused}): connected, receiving nothing")
        if self._paused_at is not None and now - self._paused_at > stall:
            problems.append(f"ingest: reading paused by back-pressure for {now - self._paused_at:.0f} s")
        return problems

    # --- commit --------------------------------------------------------------------------------------

    async def _writer(self, index: int) -> None:
        while True:
            batch = await self._sealed.get()
            started = time.monotonic()
            try:
                await self._commit(batch.messages)
            except Exception:  # never lose the writer task: the batch is bisected and quarantined inside
                m.HANDLER_ERRORS.labels("writer").inc()
                logger.exception("batch commit failed unexpectedly")
                await self._quarantine_each(batch.messages)
            m.COMMIT_SECONDS.observe(time.monotonic() - started)
            m.BATCH_MESSAGES.observe(len(batch.messages))
            if self.after_commit is not None:  # e.g. the analytics stream; before the ack, never instead of it
                try:
                    await self.after_commit([msg.parsed for msg in batch.messages])
                except Exception:
                    m.HANDLER_ERRORS.labels("after_commit").inc()
                    errors.log("after-commit hook raised; the batch is stored and acked all the same")
            batch.done = True
            self._ack_in_order()

    async def _commit(self, messages: list[Pending]) -> None:
        """Commit ``messages`` (retrying transient failures); bisect on refused data.

        A failure not clearly about the data (anything but SQLSTATE classes 22 and 23) is retried, not counted,
        while the database does not answer a probe (:func:`ingest.errors.judge`): a connection broken by a server
        shutdown mid-COPY once quarantined a good message. While it answers, such a failure is retried
        :data:`ingest.errors.UNKNOWN_ERROR_RETRIES` times (a client error that is no database error: not at
        all), then the batch is bisected down to the message that causes it.
        """
        assert self._pool is not None
        backoff = Backoff(self.config.retry_min_s, self.config.retry_max_s)
        attempts = 0  # failures that count toward the poison limit
        while True:
            claimed: dict[str, str] = {}
            try:
                claims = self.kinds.claims((msg.received_at, msg.parsed) for msg in messages)
                async with self._pool.acquire() as conn:
                    try:
                        if claims:  # devices new to the registry (as this process knows it): it decides their kind
                            async with conn.transaction():
                                claimed = await claim_kinds(conn, claims)
                                rows = self._rows(messages, claimed)
                                await write_batch(conn, rows, self.config.write_method)
                        else:
                            rows = self._rows(messages, claimed)
                            await write_batch(conn, rows, self.config.write_method)
                    except Exception as err:  # the pool must not hand out a connection in an unknown state
                        terminate_unless_server_error(conn, err)
                        raise
            except Exception as err:
                self.last_db_error = clean_text(f"{type(err).__name__}: {err}", limit=200)
                verdict, counted = await judge(err, attempts + 1, self._pool)
                attempts += counted
                if verdict is Failure.PERMANENT:
                    m.DB_ERRORS.labels("permanent").inc()
                    await self._bisect(messages, err)
                    return
                m.DB_ERRORS.labels("transient").inc()
                delay = backoff.next_delay()
                logger.warning("batch of %d messages not committed (%s: %s)%s; retry in %.1fs",
                               len(messages), type(err).__name__, err,
                               f" [{attempts} of {UNKNOWN_ERROR_RETRIES} tries while the database answers]"
                               if counted else "", delay)
                await asyncio.sleep(delay)
                continue
            self.kinds.learn(claimed)
            self._committed(messages, rows)
            return

    def _rows(self, messages: list[Pending], claimed: dict[str, str]) -> BatchRows:
        """The batch's rows, each message held to its device's registry kind first (ingest/kinds.py)."""
        refused = self.kinds.settle(((msg.channel, msg.received_at, msg.parsed) for msg in messages), claimed)
        if refused:
            m.quarantined(Reason.KIND_CONFLICT.value).inc(refused)
        return build_rows(messages, self.registry, self.config.quarantine_payload_bytes)

    async def _bisect(self, messages: list[Pending], err: BaseException) -> None:
        if len(messages) > 1:
            half = len(messages) // 2
            await self._commit(messages[:half])
            await self._commit(messages[half:])
            return
        msg = messages[0]
        logger.error("rows of message %d not stored: %s; quarantined", msg.mid, err)
        payload = b"".join(_record_bytes(msg.parsed))
        refused = isinstance(err, asyncpg.PostgresError)
        reason = Reason.DB_REJECTED if refused else Reason.INTERNAL_ERROR
        what = "database refused the rows" if refused else "building or writing the rows raised"
        rejection = Rejection(f"(message on {msg.channel})", msg.received_at, reason,
                              clean_text(f"{what}: {type(err).__name__}: {err}", limit=2000), payload)
        m.quarantined(reason.value).inc()
        # the message's own rejections (bad batch items) stay with it
        msg.parsed = ParsedMessage([], [*msg.parsed.rejections, rejection])
        assert self._pool is not None
        rows = BatchRows(quarantine=[quarantine_row(r, self.config.quarantine_payload_bytes)
                                     for r in msg.parsed.rejections])
        await self._commit_rows_forever(rows)
        self._committed(messages, rows)

    async def _quarantine_each(self, messages: list[Pending]) -> None:
        """Last resort when a batch's commit raised outside the retry logic: each message alone."""
        for msg in messages:
            await self._bisect([msg], RuntimeError("batch commit failed unexpectedly"))

    async def _commit_rows_forever(self, rows: BatchRows) -> None:
        assert self._pool is not None
        backoff = Backoff(self.config.retry_min_s, self.config.retry_max_s)
        while True:
            try:
                async with self._pool.acquire() as conn:
                    await write_batch(conn, rows, "unnest")
                return
            except Exception as err:
                delay = backoff.next_delay()
                logger.warning("quarantine write failed (%s); retry in %.1fs", err, delay)
                await asyncio.sleep(delay)

    def _committed(self, messages: list[Pending], rows: BatchRows) -> None:
        self.last_db_error = None
        self.registry.committed(rows.devices)
        self.latest.add(rows.telemetry)
        now = datetime.now(UTC)
        per_channel: dict[str, int] = {}
        for msg in messages:
            per_channel[msg.channel] = per_channel.get(msg.channel, 0) + 1
            for rec in msg.parsed.records:
                if isinstance(rec, Reading):
                    m.LAG_SECONDS.observe(max(0.0, (now - rec.ts).total_seconds()))
        for channel, count in per_channel.items():
            m.committed(channel).inc(count)
        m.VALUES_COMMITTED.inc(len(rows.telemetry))

    def _ack_in_order(self) -> None:
        # MQTT wants PUBACKs in receive order; batches may finish out of order with several writers.
        released = 0
        settled = self.gate.settled() if self.gate is not None else None
        generation = self.session.generation
        while self._order and self._order[0].done:
            # With a gate, also once the stages stored what the batch caused; a batch of an earlier connection
            # is let go at once (its acks are stale: the broker sends it again anyway)
            if settled is not None and self._order_seq[0] > settled and \
                    self._order[0].messages[-1].generation == generation:
                break
            batch = self._order.popleft()
            self._order_seq.popleft()
            for msg in batch.messages:
                if not self.session.ack(msg.mid, msg.generation, msg.qos) and msg.qos:
                    m.ACKS_SKIPPED.inc()
                self._pending_bytes -= msg.size
            released += len(batch.messages)
        if released:
            self._pending -= released
            self._progress_at = time.monotonic()
            m.PENDING.set(self._pending)
            self._resume_if_room()

    def _resume_if_room(self) -> None:
        if self._pending > self._limit() // 2 or self._pending_bytes > self.config.max_pending_bytes // 2 or \
                self._stopped.is_set():
            return  # (stopping: the drain paused reading for good)
        if self.gate is not None and (self.gate.hold() or not self.gate.has_room()):
            return
        self.session.resume_reading()
        self._paused_at = None
        m.PAUSED.set(0)

    async def _gate_loop(self, gate: AckGate) -> None:
        """Acks held for the stages, as they store; a stage that dropped input has the broker send it again."""
        while True:
            await asyncio.sleep(GATE_EVERY_S)
            gate.sync()
            self._ack_in_order()
            lost = gate.lost()
            if lost is None:
                gate.widen()
                if self._paused_at is not None:
                    self._resume_if_room()
                continue
            # every batch up to the lost message acked (the one holding it is not), the stages with room again:
            # the rest comes again on a new connection of this session
            acked_up_to_lost = not self._order_seq or self._order_seq[0] > lost
            if gate.settled() >= lost and acked_up_to_lost and gate.has_room() and not self._stopped.is_set():
                logger.warning("ingest: a stage dropped input after message %d; the broker is made to send the %d "
                               "messages not acked again", lost, self._pending)
                gate.narrowed(self._pending)
                self.session.reconnect("a stage dropped input")
                gate.redelivering()  # the old connection's messages are acked no more: positions may pass them
                self._resume_if_room()

    # --- housekeeping --------------------------------------------------------------------------------

    async def _maintenance_loop(self) -> None:
        assert self._pool is not None and self.maintenance_interval_s
        while True:
            try:
                async with self._pool.acquire() as conn:
                    backend = await read_backend(conn)
                    await run_maintenance(conn, backend, self.storage)
            except Exception as err:
                logger.warning("maintenance failed: %s", err)
            await asyncio.sleep(self.maintenance_interval_s)


    async def _latest_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.latest_every_s)
            await self._write_latest()

    async def _write_latest(self) -> None:
        if not len(self.latest) or self._pool is None:
            return
        try:
            async with self._pool.acquire(timeout=10) as conn:
                await self.latest.flush(conn)
        except Exception as err:  # kept for the next round; the readings themselves are committed
            logger.warning("latest values not written (%d kept for the next try): %s", len(self.latest), err)

    async def _rollup_loop(self) -> None:
        """Fallback backend: keep the rollups current (one worker at a time; TimescaleDB has jobs for it)."""
        assert self._pool is not None
        lookback = timedelta(minutes=self.storage.rollup_lookback_min)
        while True:
            await asyncio.sleep(self.storage.rollup_every_s)
            try:
                async with self._pool.acquire() as conn:
                    if await read_backend(conn) is Backend.TIMESCALEDB:
                        return
                    await refresh_recent(conn, Backend.POSTGRES, datetime.now(UTC), lookback)
            except Exception as err:
                logger.warning("rollup refresh failed: %s", err)


def _channel_label(topic: bytes) -> str:
    """The metric label for a topic's channel: one of the known channels or "invalid" (bounded cardinality)."""
    channel = topic.rsplit(b"/", 1)[-1].decode("ascii", "replace") if topic.count(b"/") == 4 else ""
    return channel if channel in CHANNELS else "invalid"


def _record_bytes(parsed: ParsedMessage) -> list[bytes]:
    return [repr(rec).encode()[:4096] for rec in parsed.records]
