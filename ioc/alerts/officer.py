"""Officers' actions on the alert engine's incidents: acknowledge, assign, comment, resolve, close.

A mixin of :class:`ioc.alerts.engine.AlertEngine` (kept apart so the engine's signal handling stays one
readable module); every action returns :class:`Changes` like the engine's other methods.
"""

from __future__ import annotations

from datetime import datetime

from ioc.alerts import escalation
from ioc.alerts.model import Alert, AlertError, AuditEntry, Changes, Incident, State


class OfficerActions:
    """What an officer does to an incident; the engine provides the state and the lifecycle steps below."""

    alerts: dict[int, Alert]
    incidents: dict[int, Incident]

    def _resolve_alert(self, alert: Alert, now: datetime, actor: str, note: str, ch: Changes) -> None:
        raise NotImplementedError  # the engine's

    def _settle(self, now: datetime, ch: Changes) -> None:
        raise NotImplementedError  # the engine's

    def _resolve_incident(self, inc: Incident, now: datetime, actor: str, note: str | None, ch: Changes) -> None:
        raise NotImplementedError  # the engine's

    def _close_members(self, inc: Incident, now: datetime, actor: str, note: str, ch: Changes) -> None:
        raise NotImplementedError  # the engine's

    def _forget(self, inc: Incident) -> None:
        raise NotImplementedError  # the engine's

    def incident(self, incident_id: int) -> Incident:
        inc = self.incidents.get(incident_id)
        if inc is None:
            raise AlertError(f"incident {incident_id} is not live (closed or unknown)")
        return inc

    def alert(self, alert_id: int) -> Alert:
        a = self.alerts.get(alert_id)
        if a is None:
            raise AlertError(f"alert {alert_id} is not live (closed or unknown)")
        return a

    def acknowledge(self, incident_id: int, actor: str, note: str | None, now: datetime) -> Changes:
        """Acknowledge an incident and its live alerts; escalation stops."""
        inc, ch = self.incident(incident_id), Changes()
        if inc.state != State.OPEN:
            raise AlertError(f"incident {incident_id} is {inc.state.value}, not open")
        inc.state, inc.acked_by, inc.acked_at, inc.updated_at = State.ACKNOWLEDGED, actor, now, now
        escalation.stop(inc, f"acknowledged by {actor}")
        for m in inc.members:
            a = self.alerts.get(m)
            if a is not None and a.state == State.OPEN:
                a.state, a.acked_by, a.acked_at = State.ACKNOWLEDGED, actor, now
                ch.alerts[a.id] = a
        ch.incidents[inc.id] = inc
        ch.audit.append(AuditEntry(now, "acknowledged", actor, inc.id, None, note))
        return ch

    def assign(self, incident_id: int, officer_id: str | None, actor: str, now: datetime) -> Changes:
        inc, ch = self.incident(incident_id), Changes()
        inc.assignee, inc.updated_at = officer_id, now
        ch.incidents[inc.id] = inc
        ch.audit.append(AuditEntry(now, "assigned", actor, inc.id, None, officer_id or "unassigned"))
        return ch

    def comment(self, incident_id: int, actor: str, note: str, now: datetime) -> Changes:
        inc, ch = self.incident(incident_id), Changes()
        inc.updated_at = now
        ch.incidents[inc.id] = inc
        ch.audit.append(AuditEntry(now, "commented", actor, inc.id, None, note))
        return ch

    def resolve(self, incident_id: int, actor: str, note: str | None, now: datetime) -> Changes:
        """Resolve by hand: every live member resolves (a condition still present will fire anew), then the
        incident, also when no member was live (a legacy or hand-made incident: it answered 503 before)."""
        inc, ch = self.incident(incident_id), Changes()
        if not inc.live:
            raise AlertError(f"incident {incident_id} is already {inc.state.value}")
        for m in list(inc.members):
            a = self.alerts.get(m)
            if a is not None and a.live:
                self._resolve_alert(a, now, actor, note or "resolved by hand", ch)
        self._settle(now, ch)
        if inc.live:  # no live member to resolve it through
            inc.updated_at = now
            self._resolve_incident(inc, now, actor, note, ch)
            ch.incidents[inc.id] = inc
        return ch

    def close(self, incident_id: int, actor: str, note: str | None, now: datetime) -> Changes:
        """Close a resolved incident and its members; a member still live (a legacy row's: the engine resolves
        members first) resolves on the way, so none is left open under a closed incident."""
        inc, ch = self.incident(incident_id), Changes()
        if inc.state != State.RESOLVED:
            raise AlertError(f"incident {incident_id} is {inc.state.value}; resolve it first")
        inc.state, inc.closed_at, inc.updated_at = State.CLOSED, now, now
        self._close_members(inc, now, actor, note or "closed with its incident", ch)
        ch.incidents[inc.id] = inc
        ch.audit.append(AuditEntry(now, "closed", actor, inc.id, None, note))
        self._forget(inc)
        return ch
