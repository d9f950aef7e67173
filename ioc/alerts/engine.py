"""The alert engine: signals in, alert and incident lifecycle out. Pure and clock-driven.

Every method takes ``now`` and returns :class:`Changes` (what to store, push and page), so the same
engine runs live (the stage passes the wall clock) and in tests and benchmarks (a controlled clock).

Lifecycle: a signal that stays active ``for_s`` fires an alert (open); officers acknowledge, assign,
comment, resolve; a condition that stays clear ``resolve_after_s`` resolves it by itself (so a
flapping signal is one alert whose ``flaps`` count grows); resolved alerts close after
``close_after_s``. Alerts join incidents (see :mod:`ioc.alerts.correlate`); incidents page through
escalation policies unless silenced or inhibited, and stop paging once acknowledged or resolved.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from ioc.alerts import correlate, escalation, rules
from ioc.alerts.escalation import Policy, Shift
from ioc.alerts.incident_index import IncidentIndex
from ioc.alerts.model import LIVE, Alert, AuditEntry, Changes, Incident, Page, Severity, Signal, State, rank
from ioc.alerts.officer import OfficerActions
from ioc.alerts.silences import Silence, silencing

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class EngineConfig:
    """Timers of the engine (rules carry their own hysteresis)."""

    close_after_s: float = 3600.0
    reopen_within_s: float = 1800.0
    """A problem back this soon after its incident resolved reopens that incident (not a new one)."""
    correlation: correlate.CorrelationConfig = field(default_factory=correlate.CorrelationConfig)
    notify_resolved: bool = True  # tell machine receivers (webhook) when a paged incident resolves
    resolution_memory_s: float = 86400.0
    """How long the last resolution of each key is remembered (signals replayed from before it are ignored)."""


class AlertEngine(OfficerActions):
    """Holds live alerts and incidents in memory; the stage persists every change it returns."""

    def __init__(self, config: EngineConfig | None = None,
                 district_name: Callable[[str | None], str | None] = lambda code: code,
                 road_of: Callable[[float | None, float | None], str | None] = lambda lat, lon: None) -> None:
        self.config = config or EngineConfig()
        self.district_name = district_name
        self.road_of = road_of  # the road a traffic sensor stands on (incidents follow the road)
        self.alerts: dict[int, Alert] = {}
        self.by_key: dict[str, Alert] = {}  # live alerts by dedupe key
        # Alert ids per device (ids no longer in ``alerts`` are dropped when met): grouping looks up a device's
        # alerts here instead of scanning every incident's members, which made a storm's step quadratic.
        self._by_device: dict[str, list[int]] = {}
        # Incidents whose members changed in this call: retitled, re-silenced and (with no live member left)
        # resolved once at its end, not once per alert (a 3,000-alert incident made that quadratic).
        self._dirty: dict[int, Incident] = {}
        # incident id -> (who resolved its latest alert, note, that alert, how many of its alerts resolved)
        self._resolving: dict[int, tuple[str, str, Alert, int]] = {}
        # Correlation's lookups for the call in progress (built by its first new alert, dropped at its end):
        # a new alert no longer scans every incident held (a 12,000-alert burst made that quadratic).
        self._incidents_indexed: IncidentIndex | None = None
        # active, waiting for for_s: key -> (first seen, first signal time, latest signal)
        self.pending: dict[str, tuple[datetime, datetime, Signal]] = {}
        self.incidents: dict[int, Incident] = {}
        # Last resolution per dedupe key: input is at least once (a new leader may be handed an alarm again), and
        # a signal from before the key's last resolution must not reopen what an officer (or the engine) resolved.
        self.resolved: dict[str, datetime] = {}
        self.replayed = 0  # signals ignored because they were older than their key's last resolution
        self._pruned_at: datetime | None = None
        self.silences: list[Silence] = []
        self.policies: list[Policy] = []
        self.shifts: list[Shift] = []
        self.next_alert_id = 1
        self.next_incident_id = 1
        # Ids from elsewhere (the stage reserves them from the database's sequences): kind -> id. None:
        # number from the counters above (replays, tests, benchmarks without a database).
        self.id_source: Callable[[str], int] | None = None

    # --- loading -------------------------------------------------------------------------------------------

    def load(self, alerts: Iterable[Alert], incidents: Iterable[Incident], next_alert_id: int,
             next_incident_id: int, resolved: dict[str, datetime] | None = None) -> None:
        """Restore live and recently resolved alerts and incidents after a restart.

        ``resolved``: the last resolution time of each dedupe key (from every stored alert, closed ones too).
        """
        self._incidents_indexed = None
        for key, ts in (resolved or {}).items():
            self._mark_resolved(key, ts)
        for inc in incidents:
            self.incidents[inc.id] = inc
        for a in alerts:
            self.alerts[a.id] = a
            self._index(a)
            if a.live:
                self.by_key[a.key] = a
            elif a.resolved_at is not None:
                self._mark_resolved(a.key, a.resolved_at)
            owner = self.incidents.get(a.incident_id or -1)
            if owner is not None and a.id not in owner.members:
                owner.members.append(a.id)
        self.next_alert_id = max(self.next_alert_id, next_alert_id)
        self.next_incident_id = max(self.next_incident_id, next_incident_id)

    def _new_id(self, kind: str) -> int:
        if self.id_source is not None:
            return self.id_source(kind)
        if kind == "alert":
            self.next_alert_id += 1
            return self.next_alert_id - 1
        self.next_incident_id += 1
        return self.next_incident_id - 1

    def _incident_index(self) -> IncidentIndex:
        if self._incidents_indexed is None:
            self._incidents_indexed = IncidentIndex(self.incidents, self.alerts, self.config.correlation)
        return self._incidents_indexed

    def _index(self, alert: Alert) -> None:
        if alert.device_id is not None:
            self._by_device.setdefault(alert.device_id, []).append(alert.id)

    def _device_alerts(self, device_id: str | None) -> list[Alert]:
        """The alerts held for a device, in firing order."""
        ids = self._by_device.get(device_id) if device_id is not None else None
        if not ids:
            return []
        held = [self.alerts[i] for i in ids if i in self.alerts]
        if len(held) < len(ids):  # forgotten alerts: prune the index
            if held:
                self._by_device[device_id] = [a.id for a in held]  # type: ignore[index]
            else:
                del self._by_device[device_id]  # type: ignore[arg-type]
        return held

    def _mark_resolved(self, key: str, ts: datetime) -> None:
        last = self.resolved.get(key)
        if last is None or ts > last:
            self.resolved[key] = ts

    def _replayed(self, sig: Signal) -> bool:
        """An active signal no newer than its key's last resolution: a replay of what was resolved (ignored)."""
        last = self.resolved.get(sig.key)
        if last is None or sig.ts > last:
            return False
        self.replayed += 1
        logger.debug("signal %s of %s is not after its last resolution (%s): ignored", sig.key, sig.ts, last)
        return True

    def live_evidence(self, key: str) -> dict[str, Any] | None:
        """Evidence of the live alert with this key (None when there is none): lets readings clear it."""
        a = self.by_key.get(key)
        return a.evidence if a is not None else None

    def has_live(self, device_id: str) -> bool:
        return any(a.device_id == device_id for a in self.by_key.values())

    # --- signals -------------------------------------------------------------------------------------------

    def observe(self, signals: Iterable[Signal], now: datetime) -> Changes:
        """Apply signals; fires, updates and clears alerts and pages what must be paged."""
        ch, self._incidents_indexed = Changes(), None
        for sig in signals:
            alert = self.by_key.get(sig.key)
            if not sig.active:
                self.pending.pop(sig.key, None)
                if alert is not None and alert.clearing_since is None:
                    alert.clearing_since = now
                continue
            if alert is not None:
                self._refresh(alert, sig, now, ch)
            elif self._replayed(sig):
                continue
            elif _hold_s(sig) <= 0:
                self._fire(sig, now, ch)
            else:
                since, first_ts, _ = self.pending.get(sig.key, (now, sig.ts, sig))
                self.pending[sig.key] = (since, first_ts, sig)
        self._incidents_indexed = None
        self._settle(now, ch)
        self._escalate(now, ch)
        return ch

    def _refresh(self, alert: Alert, sig: Signal, now: datetime, ch: Changes) -> None:
        if alert.clearing_since is not None:
            alert.clearing_since = None
            alert.flaps += 1  # it came back before the hysteresis ran out: the same alert, not a new one
            ch.alerts[alert.id] = alert
        alert.last_seen_at = max(alert.last_seen_at, now)
        if rank(sig.severity) > rank(alert.severity):
            alert.severity = sig.severity
            ch.alerts[alert.id] = alert
            inc = self.incidents.get(alert.incident_id or -1)
            if inc is not None and rank(sig.severity) > rank(inc.severity):
                inc.severity, inc.updated_at = sig.severity, now
                ch.incidents[inc.id] = inc
        if sig.evidence and sig.evidence != alert.evidence:
            alert.evidence = {**alert.evidence, **sig.evidence}
            alert.explanation = sig.explanation or alert.explanation
            ch.alerts[alert.id] = alert
        if sig.title and sig.title != alert.title:  # the condition changed its face (frozen, then black)
            alert.title = sig.title
            ch.alerts[alert.id] = alert
            inc = self.incidents.get(alert.incident_id or -1)
            if inc is not None:
                self._dirty[inc.id] = inc
                ch.incidents[inc.id] = inc

    def _fire(self, sig: Signal, now: datetime, ch: Changes) -> None:
        spec = rules.spec(sig.rule)
        alert = Alert(self._new_id("alert"), sig.key, sig.rule, spec.category, sig.severity, State.OPEN,
                      sig.title or sig.rule, sig.explanation, started_at=min(sig.ts, now), last_seen_at=now,
                      device_id=sig.device_id, kind=sig.kind, district=sig.district, lat=sig.lat, lon=sig.lon,
                      evidence=dict(sig.evidence))
        self.alerts[alert.id] = self.by_key[alert.key] = alert
        self._index(alert)
        road = self.road_of(alert.lat, alert.lon) if alert.category == "traffic" else None
        cfg, index = self.config.correlation, self._incident_index()
        device_alerts = self._device_alerts(alert.device_id)
        device_incidents = {a.incident_id for a in device_alerts
                            if a.incident_id is not None and correlate.same_device_recent(alert, a, cfg)}
        inc = index.choose(alert, road, device_incidents)  # = correlate.choose_incident over the live incidents
        if inc is None and spec.opens_incident:
            held = {a.incident_id for a in device_alerts if a.incident_id is not None}
            inc = self._reopen(alert, road, now, ch, held)
            if inc is not None:
                self._adopt(inc, alert, ch)
        if inc is None and not spec.opens_incident:
            self._fire_standalone(alert, now, ch)
            return
        if inc is None:
            inc = Incident(self._new_id("incident"), correlate.group_key(alert, road), alert.category, alert.severity,
                           State.OPEN, alert.title, alert.started_at, now, district=alert.district)
            self.incidents[inc.id] = inc
            index.opened(inc)
            ch.audit.append(AuditEntry(now, "incident_opened", "system", inc.id, alert.id, inc.title))
            self._adopt(inc, alert, ch)
        elif correlate.inhibits(inc, alert):
            alert.suppressed = f"inhibited:{inc.id}"
        alert.incident_id = inc.id
        inc.members.append(alert.id)
        index.joined(inc, alert)
        if rank(alert.severity) > rank(inc.severity):
            inc.severity = alert.severity
        inc.updated_at = now
        sil = silencing(self.silences, alert, now)
        if sil is not None and alert.suppressed is None:
            alert.suppressed = f"silenced:{sil.id}"
        self._dirty[inc.id] = inc  # retitled and re-silenced at the end of the call
        ch.alerts[alert.id], ch.incidents[inc.id] = alert, inc
        ch.audit.append(AuditEntry(now, "alert_opened", "system", inc.id, alert.id, alert.title,
                                   {"rule": alert.rule, "severity": alert.severity.value,
                                    "suppressed": alert.suppressed}))

    def _reopen(self, alert: Alert, road: str | None, now: datetime, ch: Changes,
                device_incidents: set[int]) -> Incident | None:
        """The recently resolved incident of the same problem, reopened for ``alert``; None if there is none.

        A device that flaps slower than its rule's hysteresis is one incident with its history, not a new one
        each time. If an officer had acknowledged it and the problem is back on a device they had taken, it
        stays theirs and pages no one; a problem on another device of the group, or one nobody had taken,
        starts escalation again.
        """
        within = min(self.config.reopen_within_s, self.config.close_after_s)
        # the latest to resolve within ``within`` of the same group key, or holding an alert of the device
        best = self._incident_index().reopen_candidate(alert, road, device_incidents, now, within)
        if best is None:
            return None
        away = (now - (best.resolved_at or now)).total_seconds()
        times = int(best.escalation.get("reopened", 0)) + 1
        best.resolved_at = None
        if best.acked_by and self._had_device(best, alert.device_id):  # still theirs: escalation stays stopped
            best.state = State.ACKNOWLEDGED
            best.escalation["reopened"] = times
            alert.state, alert.acked_by, alert.acked_at = State.ACKNOWLEDGED, best.acked_by, now
        else:  # escalation starts over: the first page goes out again, saying so
            best.state, best.acked_by, best.acked_at = State.OPEN, None, None
            best.escalation = {"reopened": times}
        ch.audit.append(AuditEntry(now, "incident_reopened", "system", best.id, alert.id,
                                   f"{alert.title}: back {away / 60:.0f} min after it resolved"))
        return best

    def _had_device(self, inc: Incident, device_id: str | None) -> bool:
        return any(a.incident_id == inc.id for a in self._device_alerts(device_id))

    def _fire_standalone(self, alert: Alert, now: datetime, ch: Changes) -> None:
        """A context-only alert with no incident to join: listed, never paged."""
        sil = silencing(self.silences, alert, now)
        alert.suppressed = f"silenced:{sil.id}" if sil else None
        ch.alerts[alert.id] = alert
        ch.audit.append(AuditEntry(now, "alert_opened", "system", None, alert.id, alert.title,
                                   {"rule": alert.rule, "severity": alert.severity.value,
                                    "suppressed": alert.suppressed}))

    def _adopt(self, inc: Incident, alert: Alert, ch: Changes) -> None:
        """A new incident takes in the live stand-alone alerts of its device (the context that came first)."""
        for other in self._device_alerts(alert.device_id):
            if other is not alert and other.live and other.incident_id is None:
                other.incident_id = inc.id
                inc.members.append(other.id)
                self._incident_index().joined(inc, other)
                ch.alerts[other.id] = other

    # --- time ----------------------------------------------------------------------------------------------

    def tick(self, now: datetime) -> Changes:
        """Advance timers: pending alerts fire, cleared ones resolve, resolved ones close, pages go out."""
        ch, self._incidents_indexed = Changes(), None
        for key, (since, first_ts, sig) in list(self.pending.items()):
            if (now - since).total_seconds() >= _hold_s(sig):
                del self.pending[key]
                self._fire(replace(sig, ts=min(first_ts, sig.ts)), now, ch)  # it started when first seen
        self._incidents_indexed = None
        for alert in list(self.by_key.values()):
            spec = rules.spec(alert.rule)
            cleared = alert.clearing_since is not None and (
                now - alert.clearing_since).total_seconds() >= spec.resolve_after_s
            quiet = spec.auto_clear_s is not None and (now - alert.last_seen_at).total_seconds() >= spec.auto_clear_s
            if cleared or quiet:
                self._resolve_alert(alert, now, "system", "condition cleared" if cleared else "no longer reported", ch)
        self._settle(now, ch)
        close_before = now - timedelta(seconds=self.config.close_after_s)
        for alert in list(self.alerts.values()):
            if alert.state == State.RESOLVED and alert.resolved_at and alert.resolved_at <= close_before:
                alert.state, alert.closed_at = State.CLOSED, now
                ch.alerts[alert.id] = alert
                if alert.incident_id is None:
                    del self.alerts[alert.id]  # stand-alone: nothing else holds it in memory
        for inc in list(self.incidents.values()):
            if inc.live:
                self._resuppress(inc, now, ch)
            elif inc.state == State.RESOLVED and inc.resolved_at and inc.resolved_at <= close_before:
                inc.state, inc.closed_at = State.CLOSED, now
                self._close_members(inc, now, "system", "closed with its incident", ch)
                ch.incidents[inc.id] = inc
                ch.audit.append(AuditEntry(now, "incident_closed", "system", inc.id))
            if inc.state == State.CLOSED:
                self._forget(inc)
        if self._pruned_at is None or (now - self._pruned_at).total_seconds() >= 600:
            self._pruned_at = now
            horizon = now - timedelta(seconds=self.config.resolution_memory_s)
            self.resolved = {k: ts for k, ts in self.resolved.items() if ts > horizon}
        self._escalate(now, ch)
        return ch

    def _close_members(self, inc: Incident, now: datetime, actor: str, note: str, ch: Changes) -> None:
        """The members of an incident being closed close with it: a live one (a legacy row's, under a resolved
        incident) resolves first, so none is left open under a closed incident nor held in memory for good."""
        for m in inc.members:
            a = self.alerts.get(m)
            if a is not None and a.live:
                self._resolve_alert(a, now, actor, note, ch)
            if a is not None and a.state == State.RESOLVED:
                a.state, a.closed_at = State.CLOSED, now
                ch.alerts[a.id] = a

    def _forget(self, inc: Incident) -> None:
        if all(self.alerts[m].state == State.CLOSED for m in inc.members if m in self.alerts):
            for m in inc.members:
                self.alerts.pop(m, None)
            del self.incidents[inc.id]

    def _resolve_alert(self, alert: Alert, now: datetime, actor: str, note: str, ch: Changes) -> None:
        alert.state, alert.resolved_at, alert.clearing_since = State.RESOLVED, now, None
        self._mark_resolved(alert.key, now)
        if self.by_key.get(alert.key) is alert:
            del self.by_key[alert.key]
        ch.alerts[alert.id] = alert
        ch.audit.append(AuditEntry(now, "alert_resolved", actor, alert.incident_id, alert.id, note))
        inc = self.incidents.get(alert.incident_id or -1)
        if inc is None or not inc.live:
            return
        inc.updated_at = now
        ch.incidents[inc.id] = inc
        self._dirty[inc.id] = inc
        before = self._resolving.get(inc.id)
        self._resolving[inc.id] = (actor, note, alert, before[3] + 1 if before else 1)

    def _settle(self, now: datetime, ch: Changes) -> None:
        """Once per call, for each incident whose members changed: resolve it when no member is live any more
        (its last alert resolved), else retitle it and re-evaluate its silences. Linear in the members."""
        dirty, resolving = self._dirty, self._resolving
        self._dirty, self._resolving = {}, {}
        for inc in dirty.values():
            if not inc.live:
                continue
            if any(self.alerts[m].live for m in inc.members if m in self.alerts):
                self._retitle(inc)
                self._resuppress(inc, now, ch)
                continue
            if inc.id not in resolving:
                continue
            actor, note, last, count = resolving[inc.id]
            if count > 1:  # titled as when only its last alert was live (as when retitled after each resolution)
                inc.title = correlate.title_of(inc, [last], self.district_name(inc.district))
            self._resolve_incident(inc, now, actor, note, ch)

    def _resolve_incident(self, inc: Incident, now: datetime, actor: str, note: str | None, ch: Changes) -> None:
        inc.state, inc.resolved_at = State.RESOLVED, now
        paged = bool(inc.escalation.get("paged"))
        escalation.stop(inc, "resolved")
        ch.audit.append(AuditEntry(now, "incident_resolved", actor, inc.id, None, note))
        if paged and self.config.notify_resolved:
            ch.pages.append(Page(inc.id, "resolved", None, ("webhook",), now))

    def _resuppress(self, inc: Incident, now: datetime, ch: Changes) -> None:
        """Re-evaluate silences on live members; an incident is quiet when every live member is."""
        live = [self.alerts[m] for m in inc.members if m in self.alerts and self.alerts[m].live]
        for a in live:
            if a.suppressed and a.suppressed.startswith("inhibited:"):
                continue
            sil = silencing(self.silences, a, now)
            want = f"silenced:{sil.id}" if sil else None
            if want != a.suppressed:
                a.suppressed = want
                ch.alerts[a.id] = a
        quiet = [a.suppressed for a in live if a.suppressed]
        want_inc = quiet[0] if live and len(quiet) == len(live) else None
        if want_inc != inc.suppressed:
            inc.suppressed = want_inc
            ch.incidents[inc.id] = inc
            ch.audit.append(AuditEntry(now, "suppressed" if want_inc else "unsuppressed", "system", inc.id,
                                       None, want_inc))

    def _escalate(self, now: datetime, ch: Changes) -> None:
        for inc in self.incidents.values():
            if inc.state != State.OPEN or inc.suppressed:
                continue
            policy = escalation.policy_for(self.policies, inc)
            if policy is None:
                continue
            if not inc.escalation or (inc.escalation.get("policy") != policy.id and not inc.escalation.get("paged")):
                escalation.start(inc, policy, now)
            step = escalation.due(inc, policy, now)
            if step is None:
                continue
            inc.escalation["paged"] = True
            first = "reopened" if inc.escalation.get("reopened") else "firing"
            reason = first if step["first"] else "escalation"
            ch.pages.append(Page(inc.id, reason, int(step["level"]), tuple(policy.channels), now))
            ch.incidents[inc.id] = inc
            ch.audit.append(AuditEntry(now, "paged" if step["first"] else "escalated", "system", inc.id, None,
                                       f"level {step['level']} via {', '.join(policy.channels)}",
                                       {"policy": policy.id, "level": step["level"], "cycle": step["cycle"]}))

    def _retitle(self, inc: Incident) -> None:
        inc.title = correlate.title_of(inc, [self.alerts[m] for m in inc.members if m in self.alerts],
                                       self.district_name(inc.district))

    # --- silences, policies, roster ----------------------------------------------------------------------

    def set_silences(self, silences: list[Silence], now: datetime) -> Changes:
        """Replace the silence list and re-evaluate every live incident at once."""
        self.silences = list(silences)
        ch = Changes()
        for inc in list(self.incidents.values()):
            if inc.live:
                self._resuppress(inc, now, ch)
        self._escalate(now, ch)
        return ch

    def live_incidents(self) -> list[Incident]:
        return sorted((i for i in self.incidents.values() if i.state in LIVE),
                      key=lambda i: (-rank(i.severity), i.started_at))

    def members(self, incident_id: int) -> list[Alert]:
        inc = self.incidents.get(incident_id)
        return [self.alerts[m] for m in inc.members if m in self.alerts] if inc else []


def _hold_s(sig: Signal) -> float:
    """How long ``sig`` must hold before it fires."""
    return sig.for_s if sig.for_s is not None else rules.spec(sig.rule).for_s


__all__ = ["AlertEngine", "EngineConfig", "Severity"]
