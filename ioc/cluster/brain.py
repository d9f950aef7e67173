"""The brain: analytics, alerts, escalation and notifications, running only while this process holds the lease.

On takeover it loads everything from the database (engine state, learned detector state, device
arrivals), reconnects the brain's persistent QoS 1 broker session (same client id for every
candidate, so readings queued during the failover are delivered now), and starts the stages. On loss
it stops them at once and writes nothing more (every write is fenced by the lease's epoch). At a clean
shutdown it flushes and saves first, then releases the lease so a standby takes over immediately.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from analytics.findings import Finding
from ingest.contract import SUBSCRIPTION
from ingest.device_rate import DeviceRate
from ingest.guard import MetricNameGuard
from ingest.handling import handle_message
from ingest.kinds import DeviceKinds
from ingest.mqtt_session import MqttSession, SessionOptions
from ingest.records import ParsedMessage
from ioc.alerts.model import Changes
from ioc.alerts.notify.dispatcher import NotificationDispatcher
from ioc.alerts.stage import AlertStage
from ioc.analytics_stage import AnalyticsStage
from ioc.cluster.actions import ActionWorker
from ioc.cluster.ids import IdReserve
from ioc.cluster.lease import Lease
from ioc.cluster.sync import findings_payloads, health_payloads
from ioc.partition.findings import FindingsInput, tie_findings
from ioc.settings import Settings
from storage import cluster as sql
from storage.db import create_pool
from storage.writes import FindingRow

logger = logging.getLogger(__name__)

Sink = Callable[[ParsedMessage], None]
#: NOTIFY documents of findings per write at most (a storm of findings reaches other replicas' screens
#: partly; all of them are stored and reach the alert engine).
MAX_FINDING_NOTIFIES = 20


#: How often the settled watermark is read and the messages up to it acknowledged.
ACK_EVERY_S = 0.25
#: About how long a message waits for its ack while the stores work (detectors flush every second, the alert
#: stage's next tick stores, then the next ack pass): what a caller that must see it acked waits (benchmarks).
ACK_AFTER_S = 3.0


class BrainInput:
    """The brain's persistent QoS 1 session; acks wait until what a message caused has been stored.

    Each message handed to the stages gets the next sequence number (``seq``). ``settled`` returns the highest
    sequence whose effects are stored: the analytics stage hands a message's findings to the alert stage once
    its detectors ran past it, and the alert stage reports the sequence its last committed flush covered
    (see ``AlertStage.stored_seq``). Every message up to it is acknowledged; a leader killed before its flush
    leaves the rest at the broker for the next leader.

    Back-pressure: reading stops once more than ``max_unacked`` messages wait for their ack (the Receive Maximum
    the broker is asked for, enforced here too) or while the stages want no more (``hold``: the alert stage's queue of
    signals), and resumes at half / once ``has_room``. If a stage had to drop input anyway (``lost``: nothing
    after that sequence may be acked), the connection is replaced once everything before it is acked: the broker
    sends the rest again, and the stage is told (``redelivering``). The unacked bound (``window``) becomes half
    of what was unacked at each such redelivery (what a burst of findings handed over after the pause can add
    shrinks with it, so the drops end) and doubles back towards ``max_unacked`` each time a window's worth is
    stored.
    """

    def __init__(self, settings: Settings, sinks: tuple[Sink, ...],
                 settled: Callable[[], int] | None = None) -> None:
        from ioc.services import session_options

        cfg = settings.cluster
        database = urlsplit(settings.database_url).path.strip("/") or "postgres"
        client_id = cfg.brain_client_id or f"ioc-brain-{database}-{cfg.lease_name}"[:64]
        options = dataclasses.replace(
            session_options(settings, client_id), subscriptions=(SUBSCRIPTION,), qos=1, clean_start=False,
            session_expiry_s=cfg.brain_session_expiry_s)
        self.sinks = sinks
        self.guard = MetricNameGuard()
        self.rate = DeviceRate(settings.ingest.device_bytes_per_s, settings.ingest.device_burst_bytes)
        self.kinds = DeviceKinds()  # the registry's kinds (the brain loads them before reading, then keeps them)
        self.session = MqttSession(options, self._on_message)
        self.lag_s: float | None = None
        self.seq = 0  # sequence number of the last message handed to the stages
        self.redelivered = False  # the message being handed to the stages was sent to this session before (DUP)
        self.settled: Callable[[], int] = settled or (lambda: self.seq)
        self._unacked: deque[tuple[int, int, int, int]] = deque()  # (seq, mid, connection generation, qos)
        self.max_unacked = self.window = max(1, options.receive_maximum)
        self._widen_at = 0  # the window doubles once the stages have stored up to this sequence
        self.hold: Callable[[], bool] = lambda: False
        self.has_room: Callable[[], bool] = lambda: True
        self.lost: Callable[[], int | None] = lambda: None
        self.redelivering: Callable[[], None] = lambda: None
        self.held = False  # reading paused for back-pressure
        self.redeliveries = 0
        self._draining = False

    def _on_message(self, message: mqtt.MQTTMessage, generation: int) -> None:
        now = datetime.now(UTC)
        self.seq += 1  # on the event loop, before the sinks: the stages read it as their position
        self.redelivered = bool(message.dup)  # ... and this (the analytics stage: a copy of a snapshot analysed?)
        # The ingest's own handler: parse, caps, every sink under the catch-all (never raises).
        parsed = handle_message(message, now, self.guard, self.sinks, stores=False, kinds=self.kinds, rate=self.rate)
        stamps = [r.ts for r in parsed.records if getattr(r, "ts", None) is not None]
        if stamps:
            self.lag_s = max(0.0, (now - max(stamps)).total_seconds())
        if message.qos:
            self._unacked.append((self.seq, message.mid, generation, message.qos))
        # past the window (a broker that honours the Receive Maximum never sends more), or the stages are full:
        # paused within this packet, paho reads no further one (MqttSession._read_budget)
        if not self.held and (len(self._unacked) > self.window or self.hold()):
            self.held = True
            self.session.pause_reading(f"brain back-pressure: {len(self._unacked)} messages unacked, stages "
                                       f"{'full' if self.hold() else 'ready'}")

    def ack_settled(self) -> int:
        """Acknowledge every message whose effects are stored (up to the settled watermark); returns how many."""
        upto = self.settled()
        acked = 0
        while self._unacked and self._unacked[0][0] <= upto:
            _, mid, generation, qos = self._unacked.popleft()
            self.session.ack(mid, generation, qos)  # a stale generation is skipped (the broker redelivers)
            acked += 1
        return acked

    async def run(self) -> None:
        acker = asyncio.create_task(self._ack_loop())
        try:
            while True:
                session = self.session
                await session.run()
                if self.session is session:  # stopped, not replaced for a redelivery
                    break
        finally:
            acker.cancel()

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_EVERY_S)
            self.ack_settled()
            await self.flow()

    async def flow(self) -> None:
        """After an ack pass: read again once the stages have room, or have input a stage dropped sent again."""
        if self._draining:
            return
        lost = self.lost()
        if lost is not None:
            if self.settled() >= lost and self.has_room():
                await self._redeliver(lost)
            return
        if self.window < self.max_unacked and self.settled() >= self._widen_at:
            self.window = min(self.max_unacked, 2 * self.window)
            self._widen_at = self.seq + self.window
        if self.held and len(self._unacked) <= self.window // 2 and self.has_room() and not self.hold():
            self.held = False
            self.session.resume_reading()

    def _new_session(self, options: SessionOptions) -> MqttSession:
        return MqttSession(options, self._on_message)

    async def _redeliver(self, lost: int) -> None:
        """A new connection of the same session: the broker sends again every message not acked (all after
        ``lost``). Nothing unacked of the old connection is acked any more, so the stages may store past it."""
        old = self.session
        logger.warning("brain input: a stage dropped input after message %d; reconnecting so the broker sends the "
                       "%d messages not acked again", lost, len(self._unacked))
        old.pause_reading("redelivery")
        await old.stop()  # a clean DISCONNECT: the broker keeps the session and what it did not get acks for
        self.window = max(1, min(self.window, len(self._unacked)) // 2)  # half of what was read: less to hand over
        self._unacked.clear()
        self.session = self._new_session(old.options)
        self.held = False
        self.redeliveries += 1
        self._widen_at = self.seq + self.window
        self.redelivering()

    async def drain(self, timeout_s: float = 3.0) -> None:
        """Stop reading, then ack as the stages settle what came in (at most ``timeout_s``): a clean handover
        leaves the next leader nothing to analyse twice. Whatever is not settled by then stays at the broker."""
        self._draining = True
        self.session.pause_reading("shutdown")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._unacked and loop.time() < deadline:
            self.ack_settled()
            await asyncio.sleep(0.1)
        self.ack_settled()

    async def stop(self, session_expiry_s: int | None = None) -> None:
        await self.session.stop(session_expiry_s)

    def discard(self) -> None:
        """End the broker session for good (blocking: run it in a thread). For a lone ``all`` process at a clean
        shutdown with no restart grace (``brain_restart_grace_s = 0``): the broker would otherwise queue for it."""
        opts = self.session.options
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=opts.client_id, protocol=mqtt.MQTTv5)
        if opts.username:
            client.username_pw_set(opts.username, opts.password)
        if opts.tls is not None:
            client.tls_set_context(opts.tls.context())
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        try:
            client.connect(opts.host, opts.port, keepalive=10, clean_start=True, properties=props)
            client.loop_start()
            client.disconnect()
            client.loop_stop()
        except OSError as err:
            logger.warning("brain session %s not discarded (%s); it expires on its own", opts.client_id, err)


def tie_acks(brain_input: BrainInput, analytics: AnalyticsStage | None, alerts: AlertStage | None) -> BrainInput:
    """Tie the input's acks to the stages' watermarks (see :class:`BrainInput`); returns the input."""

    def position() -> int:
        return brain_input.seq

    def covered() -> int:  # what the alert stage's signals cover: the messages, and the findings handed over
        return min(brain_input.seq, analytics.handed) if analytics is not None else brain_input.seq

    if analytics is not None:
        analytics.position = position
        analytics.redelivered = lambda: brain_input.redelivered
    if alerts is not None:
        alerts.position = covered
        brain_input.settled = lambda: alerts.stored_seq
        brain_input.hold, brain_input.has_room = alerts.backlogged, alerts.has_room
        brain_input.lost, brain_input.redelivering = lambda: alerts.lost_after, alerts.redelivering
        alerts.held_acks = True
    elif analytics is not None:
        brain_input.settled = lambda: analytics.handed
    return brain_input


class Brain:
    """Starts and stops the stateful stages with the lease. ``state`` is the app's state (hub, pool, city)."""

    def __init__(self, state: Any, settings: Settings, process_id: str, own_input: bool,
                 feed_hub: bool, discard_session: bool = False) -> None:
        self.state, self.settings, self.process_id = state, settings, process_id
        self.own_input, self.feed_hub, self.discard_session = own_input, feed_hub, discard_session
        self.lease = Lease(settings.database_url, settings.cluster, process_id, self._start, self._stop)
        self.analytics: AnalyticsStage | None = None
        self.alerts: AlertStage | None = None
        self.dispatcher: NotificationDispatcher | None = None
        # The stateful stages' own database pool while leading: requests to the API (the app's pool) can hold
        # every connection of theirs without holding up an alert's write, a page or an officer's action.
        self.stage_pool: Any = None
        self.actions: ActionWorker | None = None
        self.input: BrainInput | None = None
        self.findings: FindingsInput | None = None  # the partition workers' findings (NATS), while leading
        self._tasks: list[asyncio.Task[Any]] = []
        self._labels: dict[str, str] = {}  # camera health label last told to the other replicas
        self._health: dict[str, dict[str, Any]] = {}  # label changes waiting to be told
        self.epoch: int | None = None
        self.started_at: datetime | None = None

    @property
    def leading(self) -> bool:
        return self.epoch is not None and self.lease.holding

    @property
    def lag_s(self) -> float | None:
        return self.input.lag_s if self.input is not None else None

    def on_parsed(self, parsed: ParsedMessage) -> None:
        """Sink for an embedded ingest worker: forwards to the stages while they run."""
        if self.analytics is not None:
            self.analytics.on_parsed(parsed)
        if self.alerts is not None:
            self.alerts.on_parsed(parsed)

    # --- guards: the fence, then tell the other replicas ----------------------------------------------

    async def _alerts_guard(self, conn: Any, ch: Changes) -> None:
        await self.lease.fence(conn)
        if ch.incidents or ch.alerts:
            await sql.notify_changes(conn, self.process_id, list(ch.incidents), list(ch.alerts))

    async def _analytics_guard(self, conn: Any, rows: list[FindingRow] | None) -> None:
        await self.lease.fence(conn)
        for doc in findings_payloads(self.process_id, rows or [])[:MAX_FINDING_NOTIFIES]:
            await sql.notify(conn, sql.CHANNEL_FINDINGS, doc)

    def _on_health(self, device_id: str, label: str, confidence: float, ts: datetime) -> None:
        """A camera's analysed health: to the alert stage, and (a change of label) to the other replicas' screens."""
        if self.alerts is not None:
            self.alerts.on_health(device_id, label, confidence, ts)
        if self._labels.get(device_id) != label:
            self._labels[device_id] = label
            dev = self.state.hub.table.devices.get(device_id)
            health = dict(dev.health) if dev is not None and dev.health else {"label": label,
                                                                                 "confidence": confidence, "ts": ts}
            self._health[device_id] = health

    async def _health_loop(self) -> None:
        """Every second: NOTIFY the other replicas of camera health labels that changed (their walls show them)."""
        while True:
            await asyncio.sleep(1.0)
            if not self._health:
                continue
            changed, self._health = self._health, {}
            try:
                async with (self.stage_pool or self.state.pool).acquire(timeout=5) as conn, conn.transaction():
                    await self.lease.fence(conn)  # a deposed leader's labels are stale: the walls follow the new one
                    for doc in health_payloads(self.process_id, changed):
                        await sql.notify(conn, sql.CHANNEL_HEALTH, doc)
            except Exception as err:  # screens elsewhere miss a label change; the next change is sent again
                logger.warning("camera health not sent to the other replicas (%s)", err)

    # --- lease callbacks -------------------------------------------------------------------------------

    async def _start(self, epoch: int) -> None:
        settings, state = self.settings, self.state
        hub = state.hub
        pool = self.stage_pool = await create_pool(settings.database_url, settings.storage, min_size=0,
                                                   application_name="ioc-brain")
        snapshot = hub.snapshot_extra  # the replica's (database) snapshot: the stage must not replace it
        self.epoch, self.started_at = epoch, datetime.now(UTC)
        sinks: list[Sink] = [hub.on_parsed] if self.feed_hub else []
        loads = []  # both stages load at once: a province's learned state takes a second or two to rebuild
        if settings.analytics.enabled:
            cfg = settings.analytics
            self.analytics = AnalyticsStage(hub, pool, cfg.camera_processes, state_every_s=cfg.series_state_every_s,
                                            full_every_s=cfg.series_state_full_every_s,
                                            camera_state_every_s=cfg.camera_state_every_s,
                                            camera_state_max_age_s=cfg.camera_state_max_age_s,
                                            metric_ranges=cfg.metric_ranges,
                                            numeric=not settings.partition.nats_url)
            self.analytics.guard = self._analytics_guard
            loads.append(self.analytics.load())
        if settings.alerts.enabled:
            alerts = self.alerts = AlertStage(hub, pool, state.city, settings.alerts)
            hub.snapshot_extra = snapshot
            alerts.ids = IdReserve()
            alerts.engine.id_source = alerts.ids
            alerts.guard = self._alerts_guard
            alerts.liveness_every_s = settings.analytics.series_state_every_s  # device arrivals: as often
            loads.append(self._load_alerts(alerts))
        await asyncio.gather(*loads)
        if self.analytics is not None:
            sinks.append(self.analytics.on_parsed)
            self._tasks.append(asyncio.create_task(self.analytics.run(), name="analytics"))
        if self.alerts is not None:
            alerts = self.alerts
            sinks.append(alerts.on_parsed)
            if self.analytics is not None:
                self.analytics.on_findings, self.analytics.on_health = alerts.on_findings, self._on_health
                self._tasks.append(asyncio.create_task(self._health_loop(), name="cluster-health"))
            dispatcher = self.dispatcher = NotificationDispatcher(pool, settings.alerts.notify)
            dispatcher.guard, dispatcher.epoch = self.lease.fence, epoch
            dispatcher.shared_limits = True
            self.actions = ActionWorker(settings.database_url, pool, alerts, epoch)
            self._tasks += [asyncio.create_task(alerts.run(), name="alerts"),
                            asyncio.create_task(dispatcher.run(), name="notifications"),
                            asyncio.create_task(self.actions.run(), name="cluster-actions")]
        if self.own_input:
            self.input = tie_acks(BrainInput(settings, tuple(sinks)), self.analytics, self.alerts)
            try:  # the registry's kinds before the first message (else the next round of kinds.run loads them)
                async with pool.acquire(timeout=10) as conn:
                    await self.input.kinds.load(conn)
            except Exception as err:
                logger.warning("device kinds not loaded yet (%s)", err)
            self._tasks += [asyncio.create_task(self.input.kinds.run(pool), name="brain-kinds"),
                            asyncio.create_task(self.input.run(), name="brain-input")]
        if settings.partition.nats_url and self.alerts is not None:
            # numeric analytics runs on `ioc analytics-worker`s: their findings come over the stream, acked once
            # the alert step covering them is stored (after tie_acks: the stage steps at a joint position)
            findings = self.findings = tie_findings(FindingsInput(None, settings.partition.stream,
                                                                  self._findings_to(self.alerts)),
                                                    self.alerts, self.input)
            self._tasks.append(asyncio.create_task(self._partition_findings(findings), name="partition-findings"))
        for task in self._tasks:  # a stage that ends on its own is a bug: say so, never silently
            task.add_done_callback(_task_ended)
        state.analytics, state.alerts = self.analytics, self.alerts
        logger.warning("brain started (epoch %d): %s", epoch, ", ".join(t.get_name() for t in self._tasks))

    @staticmethod
    async def _load_alerts(alerts: AlertStage) -> None:
        try:
            await alerts.load()
        except Exception as err:  # run() keeps trying before it starts
            logger.warning("alert engine state not restored yet: %s", err)

    def _findings_to(self, alerts: AlertStage) -> Callable[[list[Finding]], None]:
        hub = self.state.hub

        def deliver(findings: list[Finding]) -> None:
            alerts.on_findings(findings)
            for f in findings:
                hub.emit_finding(f)

        return deliver

    async def _partition_findings(self, findings: FindingsInput) -> None:
        """While leading: findings of the partition workers to the alert stage and the live hub."""
        import nats

        from ioc.partition.stream import ensure_stream

        cfg = self.settings.partition
        assert cfg.nats_url is not None
        while True:  # the stream server may come later or restart: keep trying while leading
            try:
                nc = await nats.connect(cfg.nats_url, name=f"ioc-brain-{self.process_id}")
                try:
                    js = findings.js = nc.jetstream()
                    await ensure_stream(js, cfg.stream, cfg.max_age_s)
                    await findings.run()
                finally:
                    await nc.close()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # what was handed over stays pending at the stream (redelivered after its
                # ack_wait, to this consumer again: the stage may then see a finding twice, the same alert)
                logger.warning("partition findings not read (%s); retrying", err)
                await asyncio.sleep(2.0)

    async def _stop(self, epoch: int) -> None:
        clean = self.lease.stopping  # a clean shutdown still holds the lease: save before releasing it
        state = self.state
        state.analytics = state.alerts = None
        if self.input is not None:
            if clean:  # the stages still run: they settle what came in, and it is acked (bounded: the lease is
                await self.input.drain()  # no longer renewed while stopping)
            # A lone ``all`` process: nobody resumes its session while it is down, so the broker keeps queueing
            # for it only for the restart grace (an upgrade, a reboot: the alarms meanwhile are analysed when it is
            # back), not for the hour a standby's handover needs; a grace of 0 ends the session at once.
            lone = clean and self.discard_session and not await self._candidate_beside()
            grace = self.settings.cluster.brain_restart_grace_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.input.stop(grace if lone and grace > 0 else None), 2)
            if lone and grace == 0:
                await asyncio.to_thread(self.input.discard)
        if clean:
            if self.alerts is not None:
                await self.alerts.flush()
                await self.alerts.save()
            if self.analytics is not None:
                await self.analytics.save()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.dispatcher is not None:
            await self.dispatcher.aclose()
        if self.stage_pool is not None:
            try:
                await asyncio.wait_for(self.stage_pool.close(), 5)
            except (TimeoutError, OSError):  # a connection still busy (a stuck query): cut it
                self.stage_pool.terminate()
            self.stage_pool = None
        self._tasks.clear()
        self.analytics = self.alerts = None
        self.dispatcher = self.actions = None
        self.input = self.findings = None
        self.epoch = None
        logger.warning("brain stopped (epoch %d, %s)", epoch, "clean shutdown" if clean else "lease lost")


    async def _candidate_beside(self) -> bool:
        """Another candidate for this lease is alive (heartbeat within three of ours): it resumes the brain session,
        so a lone ``all`` process's discard must not end it (what was not settled would be lost with it)."""
        try:
            async with self.state.pool.acquire(timeout=2) as conn:
                rows = await sql.members(conn, 3 * self.settings.cluster.heartbeat_s)
        except Exception as err:  # unsure: keep the session (it expires on its own) rather than lose its messages
            logger.warning("brain candidates not read (%s); the brain session is kept", err)
            return True
        return any(r["process_id"] != self.process_id and r["role"] in ("brain", "all")
                   and (r["detail"] or {}).get("lease") == self.lease.name for r in rows)


def _task_ended(task: asyncio.Task[Any]) -> None:
    """Log a brain task that ended with an exception (it is otherwise only seen at shutdown, if ever)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("brain task %s ended: %r", task.get_name(), task.exception(), exc_info=task.exception())
