"""The alert engine's vocabulary: signals in, alerts and incidents held, changes out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    """How bad; compare with :func:`rank` (critical is the highest)."""

    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"
    INFO = "info"


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.MINOR: 2, Severity.MAJOR: 3, Severity.CRITICAL: 4}
_RANK_BY_NAME: dict[str, int] = {s.value: n for s, n in _RANK.items()}


def rank(severity: str) -> int:
    """0 (info) .. 4 (critical); -1 for a severity the engine does not know (a legacy row's), as the views' SQL."""
    return _RANK_BY_NAME.get(severity, -1)


class State(StrEnum):
    """Lifecycle of alerts and incidents."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    CLOSED = "closed"


LIVE = (State.OPEN, State.ACKNOWLEDGED)


@dataclass(frozen=True, slots=True)
class Signal:
    """One observation of a condition: ``active`` it holds, otherwise it has cleared.

    ``key`` is the dedupe key: all signals with one key are one alert at a time.
    """

    rule: str
    key: str
    active: bool
    ts: datetime
    device_id: str | None = None
    kind: str | None = None
    district: str | None = None
    severity: Severity = Severity.WARNING
    title: str = ""
    explanation: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    lat: float | None = None
    lon: float | None = None
    for_s: float | None = None  # how long it must hold before it fires, when not the rule's ``for_s``


class Undo:
    """While an engine step runs (ioc/alerts/checkpoint.py), the fields of each alert and incident as they were
    before its first change: id -> (the record, ``save(record)``)."""

    log: dict[int, tuple[Any, Any]] | None = None
    save: Any = None


class _Undoable:
    """Base of the records a step changes by assignment (an in-place change of a field's dict or list is not
    noted: incidents' members and escalation are kept whole by the checkpoint; alerts' evidence is replaced)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: Any) -> None:
        log = Undo.log
        if log is not None and id(self) not in log:
            log[id(self)] = Undo.save(self)
        object.__setattr__(self, name, value)


@dataclass(slots=True)
class Alert(_Undoable):
    """One condition on one thing (device, district), from first firing to closing."""

    id: int
    key: str
    rule: str
    category: str
    severity: Severity
    state: State
    title: str
    explanation: str
    started_at: datetime
    last_seen_at: datetime
    device_id: str | None = None
    kind: str | None = None
    district: str | None = None
    lat: float | None = None
    lon: float | None = None
    incident_id: int | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    acked_by: str | None = None
    acked_at: datetime | None = None
    assignee: str | None = None
    flaps: int = 0
    suppressed: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    clearing_since: datetime | None = None  # condition cleared at; resolves after the rule's hysteresis

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def to_dict(self, raw: bool = False) -> dict[str, Any]:
        """JSON-ready (times as RFC 3339) or, with ``raw``, datetimes kept for the database."""
        iso = _keep if raw else _iso
        return {"id": self.id, "dedupe_key": self.key, "rule": self.rule, "category": self.category,
                "severity": self.severity.value, "state": self.state.value, "title": self.title,
                "explanation": self.explanation, "device_id": self.device_id, "kind": self.kind,
                "district": self.district, "incident_id": self.incident_id, "started_at": iso(self.started_at),
                "last_seen_at": iso(self.last_seen_at), "resolved_at": iso(self.resolved_at),
                "closed_at": iso(self.closed_at), "acked_by": self.acked_by, "acked_at": iso(self.acked_at),
                "assignee": self.assignee, "flaps": self.flaps, "suppressed": self.suppressed,
                "evidence": self.evidence, "lat": self.lat, "lon": self.lon}


@dataclass(slots=True)
class Incident(_Undoable):
    """Alerts that share a cause (e.g. every BTS of one district on battery)."""

    id: int
    group_key: str
    category: str
    severity: Severity
    state: State
    title: str
    started_at: datetime
    updated_at: datetime
    district: str | None = None
    resolved_at: datetime | None = None
    closed_at: datetime | None = None
    acked_by: str | None = None
    acked_at: datetime | None = None
    assignee: str | None = None
    suppressed: str | None = None
    members: list[int] = field(default_factory=list)  # alert ids, in joining order
    escalation: dict[str, Any] = field(default_factory=dict)  # policy, step, next_due, repeats

    @property
    def live(self) -> bool:
        return self.state in LIVE

    def to_dict(self, raw: bool = False) -> dict[str, Any]:
        """JSON-ready (times as RFC 3339) or, with ``raw``, datetimes kept for the database."""
        iso = _keep if raw else _iso
        return {"id": self.id, "group_key": self.group_key, "category": self.category,
                "severity": self.severity.value, "state": self.state.value, "title": self.title,
                "district": self.district, "started_at": iso(self.started_at), "updated_at": iso(self.updated_at),
                "resolved_at": iso(self.resolved_at), "closed_at": iso(self.closed_at), "acked_by": self.acked_by,
                "acked_at": iso(self.acked_at), "assignee": self.assignee, "suppressed": self.suppressed,
                "member_count": len(self.members), "escalation": self.escalation}


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit trail."""

    ts: datetime
    action: str
    actor: str
    incident_id: int | None = None
    alert_id: int | None = None
    note: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Page:
    """A request to notify people about an incident (the stage renders and queues it per channel)."""

    incident_id: int
    reason: str  # firing, escalation, resolved
    level: int | None
    channels: tuple[str, ...]
    ts: datetime


@dataclass(slots=True)
class Changes:
    """What one engine call changed: to store, to push on the feed, to notify."""

    alerts: dict[int, Alert] = field(default_factory=dict)
    incidents: dict[int, Incident] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)
    # Officers' actions (ioc/cluster/actions.py) these changes are the effect of: action id -> (the leader's epoch,
    # the incident as it answers). Stored as done in the same transaction as the effect, so an action is never
    # found applied without its result, nor with a result but without its effect.
    actions: dict[int, tuple[int | None, dict[str, Any]]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.alerts or self.incidents or self.audit or self.pages or self.actions)

    def merge(self, other: Changes) -> None:
        self.alerts.update(other.alerts)
        self.incidents.update(other.incidents)
        self.audit.extend(other.audit)
        self.pages.extend(other.pages)
        self.actions.update(other.actions)


class AlertError(Exception):
    """An operator action that cannot be applied (unknown id, wrong state)."""


class ActionUndone(Exception):
    """An operator action raised unexpectedly half way and was undone: the engine is as before, nothing stored."""


def iso(ts: datetime | None) -> str | None:
    """RFC 3339 with Z, or None."""
    return ts.isoformat().replace("+00:00", "Z") if ts else None


_iso = iso


def _keep(ts: datetime | None) -> datetime | None:
    return ts
