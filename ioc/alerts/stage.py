"""The alert stage: feeds the engine from ingest and analytics, stores its changes, pushes and pages.

Signals are collected from the ingest sink (statuses, device events, readings that clear alerts)
and from the analytics stage (findings, camera health), and applied once per ``tick_s`` together
with the engine's timers. Each batch of changes is written in one transaction together with the
notifications it causes (an outbox the dispatcher sends from), then pushed on the live feed. If the
database is down, changes are kept and written on the next tick: the engine's memory is the truth.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from analytics.findings import Finding
from ingest.backoff import Backoff
from ingest.records import DeviceEvent, ParsedMessage, Reading, Snapshot, StatusUpdate
from ioc.alerts import rules
from ioc.alerts.config import AlertsConfig
from ioc.alerts.engine import AlertEngine, EngineConfig
from ioc.alerts.escalation import Policy, Shift, on_duty, usable_policy
from ioc.alerts.feed_view import bounded_view, newest_critical, snapshot_section
from ioc.alerts.from_rows import alert_from_row, incident_from_row
from ioc.alerts.liveness import Liveness
from ioc.alerts.model import Alert, Changes, Incident, Page, Severity, Signal, State
from ioc.alerts.notify.dispatcher import notification_rows, targets_for
from ioc.alerts.notify.render import render
from ioc.alerts.oversize import MESSAGE_SIGNALS, refusal, set_aside_messages
from ioc.alerts.pacing import FLUSH_RETRY_MAX_S, STEP_RETRY_MAX_S, Retry
from ioc.alerts.silences import usable_silence
from ioc.alerts.stepping import Stepping
from ioc.alerts.storing import Storing, drop_connection
from ioc.cluster.ids import IdReserve
from ioc.geo import City
from ioc.live.hub import LiveHub
from storage import alerts as store
from storage import cluster as cluster_sql
from storage import notifications as outbox
from storage.writes import load_state, save_state

logger = logging.getLogger(__name__)

ALERTS_FIRED = Counter("ioc_alerts_fired", "Alerts fired", ["rule", "severity"])
PAGES = Counter("ioc_alert_pages", "Incident pages (one per firing/escalation/resolution, before fan-out)",
                ["reason"])
LIVE_INCIDENTS = Gauge("ioc_incidents_live", "Open or acknowledged incidents")
LIVENESS_STATE = "alerts_liveness"  # analytics_state row: device arrivals, so a restart still sees silence
LIVENESS_EVERY_S = 300.0
STALL_S = 30.0  # change sets unstored this long: /readyz says not ready
# Signals waiting for a step (none is taken while no ids can be reserved, or while every step raises). Unacked
# messages alone do not bound them: the broker sends up to the Receive Maximum unacked (20,000 by default) and
# QoS 0 without limit, and a message can carry 1,000 readings, each with findings. (Before, with a plain drop at
# 200,000: 2,000 alarms with 100 findings each, read while no step could run, left 19 alarms acked and never
# stored.) So the brain stops reading while ``HOLD_SIGNALS`` wait, reads again at half (ioc/cluster/brain.py).
# ``MAX_SIGNALS`` stays the hard bound on memory (findings of messages read before the pause come in bursts): a
# signal beyond it is dropped, but the acked position never passes its message (``lost_after``), and the brain
# has the broker send that message and every later one again (tests/integration/test_alert_queue_bound.py).
HOLD_SIGNALS = 50_000
MAX_SIGNALS = 200_000
SIGNALS_DROPPED = Counter("ioc_alert_signals_dropped", "Alert signals dropped at the queue's bound (their input is "
                          "not acked: the brain has the broker redeliver it)")


class AlertStage(Stepping, Storing):
    """One alert engine per deployment, beside the live hub (in the API process)."""

    def __init__(self, hub: LiveHub, pool: Any, city: City, config: AlertsConfig) -> None:
        self.hub, self.pool, self.city, self.config = hub, pool, city, config
        self.engine = AlertEngine(EngineConfig(close_after_s=config.close_after_s,
                                               reopen_within_s=config.reopen_within_s), self._district_name,
                                  city.road_of)
        self._signals: list[Signal] = []
        self._unsaved = Changes()
        self._refused: list[tuple[Signal, str]] = []  # signals no step could apply, to set aside before acking
        self._officers: list[dict[str, Any]] = []
        self._live_devices: set[str] = set()
        self._lock = asyncio.Lock()  # officers' actions and the tick take turns with the engine
        self._flush_attempts = 0
        self.flush_failing_since: datetime | None = None  # set while change sets wait for the database
        self.liveness = Liveness(config.silent_factor, config.silent_min_s)
        self.liveness_every_s = LIVENESS_EVERY_S  # the brain saves them as often as the detectors' state
        self._stalled = False
        self._quiet = 0
        #: since when (and why) every tick's step raises: the engine judges nothing meanwhile (None: it works)
        self.step_failing: tuple[datetime, str] | None = None
        #: since when (and why) loading the engine's state fails: no action is applied meanwhile (None: it loaded)
        self.load_failing: tuple[datetime, str] | None = None
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # replays set simulated time
        self.loaded = False  # the engine numbers rows itself: it must not run before it knows the last ids
        #: an API change to silences, roster or policies is stored but not yet applied (its reload failed):
        #: the next tick tries again instead of waiting for the periodic reload
        self.reload_wanted = False
        # Set when started against the database: silence is counted from then (the downtime was ours).
        # None in replays, which drive the stage in simulated time.
        self.since: datetime | None = None
        hub.snapshot_extra = self.snapshot
        # High availability (ioc/cluster): ids reserved from the database's sequences, and a hook awaited first
        # inside every flush transaction (the lease's fence, then a NOTIFY to the other replicas).
        self.ids: IdReserve | None = None
        self.guard: Callable[[Any, Changes], Awaitable[None]] | None = None
        # Acks tied to the flush (ioc/cluster/brain.py): ``position`` is the input sequence the signals collected so
        # far cover (every message up to it, and the findings handed over for it); ``stored_seq`` the highest one
        # whose effects are stored (its step's changes committed, or nothing to store).
        self.position: Callable[[], int] = lambda: 0
        self.stored_seq = 0
        self._step_seq = 0
        self.hold_signals, self.max_signals, self.message_signals = HOLD_SIGNALS, MAX_SIGNALS, MESSAGE_SIGNALS
        self._refused_messages: list[tuple[str, str, dict[str, Any]]] = []  # set aside before their ack
        #: a signal was dropped at ``max_signals``: no ack past this position until the input is redelivered (set
        #: only when the acks wait for this stage, ``tie_acks``; an embedded ingest worker acks on its own)
        self.lost_after: int | None = None
        self.held_acks = False
        self.dropped = 0
        self._flushing = asyncio.Lock()  # one flush at a time: a set stored by a later one covers the earlier
        # retries of a step that keeps raising, and of change sets the database does not take, back off
        self.step_retry = Retry(config.tick_s, STEP_RETRY_MAX_S)
        self.flush_retry = Retry(config.tick_s, FLUSH_RETRY_MAX_S)

    def _district_name(self, code: str | None) -> str | None:
        district = self.city.get(code) if code else None
        return district.name if district else code

    def _info(self, device_id: str) -> tuple[str | None, str | None, float | None, float | None]:
        dev = self.hub.table.devices.get(device_id)
        return (dev.kind, dev.district, dev.lat, dev.lon) if dev else (None, None, None, None)

    # --- inputs (event loop, cheap) ----------------------------------------------------------------------

    def on_parsed(self, parsed: ParsedMessage) -> None:
        """Ingest sink: device states and alarms, readings that may clear live alerts, arrival times.

        A message yielding more than ``message_signals`` is refused whole (:mod:`ioc.alerts.oversize`): set aside
        with a summary before its ack, instead of being dropped at the queue's bound and sent again for ever.
        """
        now, cap = self.clock(), self.message_signals
        signals: list[Signal] = []
        for rec in parsed.records:
            if isinstance(rec, StatusUpdate):
                self.liveness.state(rec.device_id, rec.state)
                if len(signals) <= cap:
                    signals += rules.from_status(rec, self._info)
                continue
            arrived = self.liveness.arrived(rec.device_id, now)
            if len(signals) > cap:  # refused: no more signals are built (memory), arrivals still count
                continue
            if arrived:
                signals.append(rules.silent_over(rec.device_id, rec.ts, self._info))
            if isinstance(rec, Reading):
                if rec.device_id in self._live_devices:
                    signals += rules.clears_from_reading(rec, self.engine.live_evidence, self._info)
            elif isinstance(rec, Snapshot):
                if rec.device_id in self._live_devices:
                    signals += rules.snapshots_back(rec.device_id, rec.ts, self.engine.live_evidence, self._info)
            elif isinstance(rec, DeviceEvent):
                signals += rules.from_event(rec, self._info)
        if len(signals) > cap:
            self._refused_messages.append(refusal(parsed, signals, cap, self.position()))
            return
        self._add(signals)

    def on_findings(self, findings: list[Finding]) -> None:
        for f in findings:
            self._add(rules.from_finding(f, self._info))

    def on_health(self, device_id: str, label: str, confidence: float, ts: datetime) -> None:
        self._add(rules.from_health(device_id, label, confidence, ts, self._info))

    def _add(self, signals: list[Signal]) -> None:
        if len(self._signals) < self.max_signals:
            self._signals.extend(signals)
            return
        if not signals:
            return
        self.dropped += len(signals)
        SIGNALS_DROPPED.inc(len(signals))
        if not self.held_acks:
            logger.error("alert signal queue full (%d); dropping %d signals", len(self._signals), len(signals))
            return
        # Their message is the current position at most (a finding's is after the position handed over): nothing
        # from the one before it on is acked until the broker has sent it again (``redelivering``).
        lost = self.position() - 1
        if self.lost_after is None:
            logger.error("alert signal queue full (%d); dropping signals: input after %d is held for redelivery",
                         len(self._signals), lost)
        self.lost_after = lost if self.lost_after is None else min(self.lost_after, lost)

    # --- back-pressure on the brain's input (ioc/cluster/brain.py) --------------------------------------

    def backlogged(self) -> bool:
        """Stop reading input: ``hold_signals`` wait for a step, or input was dropped and waits for redelivery."""
        return self.lost_after is not None or len(self._signals) >= self.hold_signals

    def has_room(self) -> bool:
        """Input may be read again (or redelivered): the signals waiting are down to half of ``hold_signals``."""
        return len(self._signals) <= self.hold_signals // 2

    def redelivering(self) -> None:
        """The input after ``lost_after`` is being sent again by the broker (a new connection; nothing of the old
        one is acked any more): positions may be stored past it again."""
        self.lost_after = None

    # --- lifecycle -------------------------------------------------------------------------------------

    async def load(self) -> None:
        """Restore live incidents and alerts, silences, roster and policies from the database."""
        async with self.pool.acquire(timeout=10) as conn:
            incidents, alerts = await store.load_unclosed(conn)
            next_alert, next_incident = await store.next_ids(conn)
            resolved = await store.last_resolutions(conn, self.engine.config.resolution_memory_s)
            arrivals = await load_state(conn, LIVENESS_STATE)
        if self.since is None:
            self.since = self.clock()
        if arrivals:
            try:
                logger.info("device arrivals restored for %d devices", self.liveness.restore(arrivals))
            except ValueError as err:
                logger.warning("device arrivals not restored (%s)", err)
        self.engine.load([alert_from_row(a) for a in alerts], [incident_from_row(i) for i in incidents],
                         next_alert, next_incident, resolved)
        await self.reload_config()
        self._live_devices = {a.device_id for a in self.engine.by_key.values() if a.device_id}
        self.loaded = True
        logger.info("alert engine: %d live incidents restored", len(self.engine.live_incidents()))

    async def reload_config(self, periodic: bool = False) -> None:
        """Re-read silences, roster and policies (after an API change, and periodically)."""
        now = datetime.now(UTC)
        async with self.pool.acquire(timeout=10) as conn:
            silences = await store.list_silences(conn, now=now)
            shifts = await store.list_shifts(conn, since=now)
            policies = await store.list_policies(conn)
            self._officers = await store.list_officers(conn)
        self.engine.shifts = [Shift(**s) for s in shifts]
        self.engine.policies = [Policy(p["id"], p["name"], Severity(p["min_severity"]), p["steps"], p["repeat"],
                                       p["channels"]) for p in policies if usable_policy(p)]
        async with self._lock:
            self._set_silences([sil for sil in map(usable_silence, silences) if sil is not None], now)
        self.reload_wanted = False
        if not periodic:  # a change (an admin's fix?): a step that keeps raising is tried again at once
            self.step_retry.succeeded()

    async def run(self) -> None:
        """Apply signals and advance timers every tick; store, push, page."""
        loop = asyncio.get_running_loop()
        waiting = Backoff(1.0, 30.0)
        while not self.loaded:
            try:
                await self.load()
            except Exception as err:
                logger.warning("alert engine waiting for the database: %s", err)
                first = self.load_failing[0] if self.load_failing else datetime.now(UTC)
                self.load_failing = (first, f"{type(err).__name__}: {err}"[:200])
                await waiting.sleep()
        self.load_failing = None
        last_reload = last_saved = loop.time()
        while True:
            await asyncio.sleep(self.config.tick_s)
            await self._tick()
            if self.reload_wanted or loop.time() - last_reload >= self.config.reload_s:
                last_reload = loop.time()
                try:
                    await self.reload_config(periodic=not self.reload_wanted)
                except Exception as err:
                    logger.warning("alert configuration not reloaded: %s", err)
            if loop.time() - last_saved >= self.liveness_every_s:
                last_saved = loop.time()
                await self.save()

    async def _tick(self) -> None:
        """Step (unless every step raises and its retry waits), then store (unless the database's retry waits)."""
        if self.step_retry.due() and await self._reserve_ids():
            async with self._lock:
                waiting = len(self._signals)  # the step never awaits: nothing arrives meanwhile
                self._step_safely(datetime.now(UTC))
                if self.step_failing is not None and len(self._signals) >= waiting:  # nothing applied
                    logger.warning("alert step raised again (%d signals wait); next try in %.1f s",
                                   len(self._signals), self.step_retry.failed())
                else:
                    self.step_retry.succeeded()
        if not self._held() or self.flush_retry.due():
            await self.flush()
            if self._held():
                self.flush_retry.failed()
            else:
                self.flush_retry.succeeded()

    async def _reserve_ids(self) -> bool:
        """Hold enough database ids for the next step (each new alert and incident takes one); False: wait."""
        if self.ids is None:
            return True
        keys = {s.key for s in self._signals if s.active} - self.engine.by_key.keys()
        need = len(keys) + len(self.engine.pending) + int(self.config.stalled_share * len(self.liveness.devices)) + 8
        try:
            async with self.pool.acquire(timeout=5) as conn:
                await self.ids.top_up(conn, need)
        except Exception as err:
            if min(self.ids.available("alert"), self.ids.available("incident")) < need:
                logger.warning("alert ids not reserved (%s); signals wait for the next tick", err)
                return False
        return True

    async def save(self) -> None:
        """Keep the device arrivals (periodically and at shutdown), so a restart can still tell silence."""
        try:
            async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                if self.guard is not None:
                    await self.guard(conn, Changes())
                await save_state(conn, LIVENESS_STATE, self.liveness.to_state())
        except Exception as err:
            logger.warning("device arrivals not saved: %s", err)

    async def flush(self) -> Changes | None:
        """Store what changed (with its notifications) in one transaction, then push it on the feed."""
        async with self._flushing:
            seq = self._step_seq
            ch = await self._flush()
            if self._refused:
                await self._set_aside_signals()
            if self._refused_messages:
                refused = self._refused_messages
                if await set_aside_messages(self.pool, refused, self.guard):
                    self._refused_messages = self._refused_messages[len(refused):]
            if not self._held():  # every step up to ``seq`` stored (failures stay held)
                if self.lost_after is not None:  # a dropped signal: never past its message
                    seq = min(seq, self.lost_after)
                self.stored_seq = max(self.stored_seq, seq)
            return ch

    def _held(self) -> bool:
        """Something waits for the database before the position may pass it."""
        return bool(self._unsaved or self._refused or self._refused_messages)

    async def _flush(self) -> Changes | None:
        ch, self._unsaved = self._unsaved, Changes()
        if not ch:
            return None
        try:
            async with self.pool.acquire(timeout=5) as conn:
                try:
                    async with conn.transaction():
                        if self.guard is not None:
                            await self.guard(conn, ch)
                        await store.save_changes(
                            conn, [self._incident_row(i) for i in ch.incidents.values()],
                            [a.to_dict(raw=True) for a in ch.alerts.values()],
                            [(e.ts, e.incident_id, e.alert_id, e.action, e.actor, e.note, e.detail)
                             for e in ch.audit])
                        rows = [row for page in ch.pages for row in self._page_rows(page)]
                        if rows:
                            await outbox.enqueue(conn, rows)
                        await cluster_sql.finish_actions(conn, ch.actions)  # their results, with their effect
                except Exception as err:
                    drop_connection(conn, err)
                    raise
        except Exception as err:
            if not await self._flush_failed(ch, err):
                return None
        self._flush_attempts, self.flush_failing_since = 0, None
        for entry in ch.audit:
            if entry.action == "alert_opened":
                ALERTS_FIRED.labels(entry.detail.get("rule", "?"), entry.detail.get("severity", "?")).inc()
        for page in ch.pages:
            PAGES.labels(page.reason).inc()
        self._push(ch)
        self._live_devices = {a.device_id for a in self.engine.by_key.values() if a.device_id}
        LIVE_INCIDENTS.set(len(self.engine.live_incidents()))
        return ch

    def health_problems(self) -> list[str]:
        """Changes waiting for the database too long make the process not ready (empty: healthy)."""
        problems = []
        if self.lost_after is not None:
            problems.append(f"alerts: {self.dropped} signals dropped at the queue's bound ({self.max_signals}); "
                            f"the input after {self.lost_after} waits to be redelivered")
        if self._stalled:  # e.g. the input's subscription silently receives nothing, or the broker link hangs
            problems.append(f"alerts: input stalled, {self._quiet} of {len(self.liveness.devices)} devices quiet at "
                            "once (silence alerts held back)")
        if self.step_failing is not None and (datetime.now(UTC) - self.step_failing[0]).total_seconds() > 5:
            problems.append(f"alerts: the engine's step raises on every tick since {self.step_failing[0]:%H:%M:%S} "
                            f"({self.step_failing[1]}); nothing is judged")
        if self.load_failing is not None and (datetime.now(UTC) - self.load_failing[0]).total_seconds() > 5:
            problems.append(f"alerts: the engine's state does not load since {self.load_failing[0]:%H:%M:%S} "
                            f"({self.load_failing[1]}); no action is applied, nothing is judged")
        since = self.flush_failing_since
        waited = (datetime.now(UTC) - since).total_seconds() if since is not None else 0.0
        if waited > STALL_S:
            problems.append(f"alerts: incident changes not stored for {waited:.0f} s ({len(self._unsaved.incidents)} "
                            f"incidents, {len(self._unsaved.pages)} pages waiting)")
        return problems

    async def act(self, action: str, incident_id: int, actor: str, note: str | None = None,
                  assignee: str | None = None, action_id: int | None = None, epoch: int | None = None) -> Incident:
        """An officer's action (acknowledge, assign, comment, resolve, close), stored before it returns.

        With ``action_id`` (a ``cluster_actions`` row) the action's result is stored as done in the same
        transaction as its effect: exactly once, even if this process dies in between.

        Raises:
            AlertError: refused (unknown incident, wrong state); nothing changed.
            ActionUndone: the engine raised half way; undone, nothing changed (the engine keeps serving).
            OSError: applied, but not stored yet (the database is away): stored with the next flush.
        """
        if not self.loaded:
            raise OSError("the alert engine is still loading its state from the database")
        apply = self._action(action, incident_id, actor, note, assignee)
        async with self._lock:
            inc = self._apply_action(apply, incident_id, action_id, epoch)
        if await self.flush() is None and self._unsaved:
            raise OSError("the action is applied but not stored yet (database unavailable); it will be retried")
        return inc

    # --- outputs -----------------------------------------------------------------------------------------

    def view_of(self, inc: Incident) -> dict[str, Any]:
        """What an officer's action answers: the incident with its members, or just its row once forgotten."""
        return self.incident_view(inc) if inc.id in self.engine.incidents else inc.to_dict()

    def incident_view(self, inc: Incident) -> dict[str, Any]:
        """The incident as screens and notifications show it (members included)."""
        members = self.engine.members(inc.id)
        return {**inc.to_dict(), "district_name": self._district_name(inc.district),
                "members": [_member(a) for a in members],
                "devices": sorted({a.device_id for a in members if a.device_id})}

    def _incident_row(self, inc: Incident) -> dict[str, Any]:
        return {**inc.to_dict(raw=True), "detail": {"escalation": inc.escalation, "members": inc.members}}

    def _page_rows(self, page: Page) -> list[outbox.NotificationRow]:
        inc = self.engine.incidents.get(page.incident_id)
        if inc is None:
            return []
        officer_ids = set(on_duty(self.engine.shifts, page.level or 1, page.ts))
        officers = [o for o in self._officers if o["id"] in officer_ids and o.get("active", True)]
        targets = targets_for(self.config.notify, officers, list(page.channels))
        if not targets:
            return []
        view = {**self.incident_view(inc), "level": page.level}
        rendered = render(view, page.reason, self.config.notify.public_url, now=page.ts,
                          tz=self.config.notify.display_tz)
        return notification_rows(rendered, inc.id, page.reason, targets)

    def feed_view(self, inc: Incident) -> dict[str, Any]:
        """The incident as the live feed carries it: at most ``hub.incident_members`` members, with counts."""
        return bounded_view(inc, self.engine.members(inc.id), self.hub.incident_members,
                            self._district_name(inc.district), _member)

    def _push(self, ch: Changes) -> None:
        for inc in ch.incidents.values():
            self.hub.emit_alert("incident", inc.id, inc.district, self.feed_view(inc))
        for a in ch.alerts.values():
            self.hub.emit_alert("alert", a.id, a.district, a.to_dict(), device_id=a.device_id)

    def snapshot(self) -> dict[str, Any]:
        """Live incidents for the feed's snapshot on connect: the ``hub.snapshot_incidents`` most severe, then the
        newest unacknowledged critical ones left out (:func:`newest_critical`)."""
        live, limit = self.engine.live_incidents(), self.hub.snapshot_incidents
        extra = newest_critical(live[limit:], lambda i: i.state == State.OPEN and i.severity == Severity.CRITICAL,
                                lambda i: (i.started_at, i.id))
        return snapshot_section([self.feed_view(i) for i in live[:limit] + extra], len(live), limit + len(extra))


def _member(a: Alert) -> dict[str, Any]:
    return {"alert_id": a.id, "device_id": a.device_id, "kind": a.kind, "rule": a.rule, "title": a.title,
            "severity": a.severity.value, "state": a.state.value, "started_at": a.to_dict()["started_at"],
            "explanation": a.explanation, "suppressed": a.suppressed, "lat": a.lat, "lon": a.lon}

