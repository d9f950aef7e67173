"""Turn an incident (a JSON-able dict) and the reason to notify into a subject, a text and a webhook payload.

Every message answers four questions for a duty officer: what happened, where, since when, and how to
acknowledge. Pure functions: no I/O, the current time is a parameter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

logger = logging.getLogger(__name__)

#: Version of the webhook payload; bumped only on incompatible changes.
PAYLOAD_VERSION = 1
#: Member alerts listed in the text body; the payload carries up to ``MAX_PAYLOAD_MEMBERS``.
MAX_TEXT_MEMBERS = 10
MAX_PAYLOAD_MEMBERS = 50
REASONS = ("firing", "reopened", "escalation", "resolved", "test")

_INCIDENT_KEYS = ("id", "title", "severity", "state", "category", "district", "district_name", "started_at",
                  "updated_at", "acked_by", "assignee", "member_count", "level")
_MEMBER_KEYS = ("alert_id", "device_id", "kind", "title", "severity", "started_at", "explanation")


@dataclass(frozen=True, slots=True)
class Rendered:
    """One notification, ready for every channel."""

    subject: str
    text: str
    payload: dict[str, Any]


def links(incident_id: int, public_url: str) -> dict[str, str]:
    """The UI link and the acknowledge API endpoint of an incident."""
    base = public_url.rstrip("/")
    return {"ui": f"{base}/ops#incident/{incident_id}", "ack": f"{base}/api/incidents/{incident_id}/ack"}


def render(incident: dict[str, Any], reason: str, public_url: str, *, now: datetime | None = None,
           tz: tzinfo | str | None = None) -> Rendered:
    """Render a notification about ``incident``.

    Args:
        incident: The incident dict (times as ISO strings), see the module of the alert engine.
        reason: Why we notify: ``firing``, ``reopened``, ``escalation``, ``resolved`` or ``test``.
        public_url: Base URL of the operator UI, for the acknowledge links.
        now: Current time, for the age of the incident (default: the wall clock).
        tz: Zone the times are shown in (default: the offset the ISO strings carry).

    Returns:
        The subject, the plain-text body and the webhook payload.
    """
    if reason not in REASONS:
        raise ValueError(f"unknown notification reason {reason!r}")
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    now = now or datetime.now(UTC)
    started = _parse(incident.get("started_at"))
    link = links(int(incident["id"]), public_url)
    subject = _subject(incident, reason, started, zone)
    text = _text(incident, reason, started, now, zone, link)
    payload = {
        "version": PAYLOAD_VERSION,
        "reason": reason,
        "subject": subject,
        "incident": _payload_incident(incident),
        "links": link,
        "text": text,
    }
    return Rendered(subject=subject, text=text, payload=payload)


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        logger.warning("unparseable incident time %r", value)
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _local(value: datetime, zone: tzinfo | None) -> datetime:
    return value.astimezone(zone) if zone else value


def _offset(value: datetime) -> str:
    """``UTC+7`` style offset; a duty officer reads that faster than +07:00."""
    delta = value.utcoffset()
    minutes = int(delta.total_seconds() // 60) if delta else 0
    sign = "+" if minutes >= 0 else "-"
    hours, rest = divmod(abs(minutes), 60)
    return "UTC" if minutes == 0 else f"UTC{sign}{hours}" + (f":{rest:02d}" if rest else "")


def _where(incident: dict[str, Any]) -> str:
    name, code = incident.get("district_name"), incident.get("district")
    if name and code and name != code:
        return f"{name} ({code})"
    return str(name or code or "city-wide")


def _age(started: datetime, now: datetime) -> str:
    minutes = max(0, int((now - started).total_seconds() // 60))
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes} min ago"
    hours, rest = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {rest} min ago"
    return f"{hours // 24} days ago"


def _tag(incident: dict[str, Any], reason: str) -> str:
    severity = str(incident.get("severity") or "info").upper()
    if reason == "resolved":
        return f"[RESOLVED {severity}]"
    if reason == "escalation":
        level = incident.get("level")
        return f"[{severity}][ESCALATED{f' L{level}' if level else ''}]"
    if reason == "test":
        return f"[TEST][{severity}]"
    if reason == "reopened":
        return f"[{severity}][REOPENED]"
    return f"[{severity}]"


def _subject(incident: dict[str, Any], reason: str, started: datetime | None, zone: tzinfo | None) -> str:
    parts = [f"{_tag(incident, reason)} {incident.get('title') or 'Incident'}"]
    title = str(incident.get("title") or "")
    name = incident.get("district_name") or incident.get("district")
    if name and str(name) not in title:  # the engine's titles often name the district already
        parts.append(f"in {_where(incident)}")
    subject = " ".join(parts)
    if started:
        local = _local(started, zone)
        subject += f" — since {local:%H:%M} {_offset(local)}"
    return f"{subject} (#{incident['id']})"


def _member_line(member: dict[str, Any], zone: tzinfo | None) -> str:
    who = " ".join(str(x) for x in (member.get("device_id"), member.get("kind")) if x)
    started = _parse(member.get("started_at"))
    since = f" since {_local(started, zone):%H:%M}" if started else ""
    line = f"  - [{member.get('severity', '?')}] {who + ': ' if who else ''}{member.get('title', '')}{since}"
    if member.get("explanation"):
        line += f" — {member['explanation']}"
    return line


def _text(incident: dict[str, Any], reason: str, started: datetime | None, now: datetime, zone: tzinfo | None,
          link: dict[str, str]) -> str:
    severity = str(incident.get("severity") or "info").upper()
    headline = {
        "firing": "New incident",
        "reopened": "Back again: this incident had resolved and the problem has returned",
        "escalation": f"Escalated to level {incident.get('level') or '?'}: nobody has acknowledged yet",
        "resolved": "Resolved",
        "test": "Test notification (no action needed)",
    }[reason]
    lines = [f"{headline} — {severity} incident #{incident['id']}", "",
             f"What:  {incident.get('title') or 'Incident'} ({incident.get('category') or 'uncategorised'})",
             f"Where: {_where(incident)}"]
    if started:
        local = _local(started, zone)
        lines.append(f"Since: {local:%Y-%m-%d %H:%M} {_offset(local)} ({_age(started, now)})")
    state = str(incident.get("state") or "open")
    if incident.get("acked_by"):
        state += f", acknowledged by {incident['acked_by']}"
    if incident.get("assignee"):
        state += f", assigned to {incident['assignee']}"
    lines.append(f"State: {state}")
    members = list(incident.get("members") or [])
    count = int(incident.get("member_count") or len(members))
    lines += ["", f"Alerts ({count}):"]
    lines += [_member_line(m, zone) for m in members[:MAX_TEXT_MEMBERS]]
    shown = min(len(members), MAX_TEXT_MEMBERS)
    if count > shown:
        lines.append(f"  … and {count - shown} more")
    lines.append("")
    if reason == "resolved" or incident.get("state") in ("resolved", "closed"):
        lines.append("No action needed: it has recovered.")
    lines += ["To acknowledge:",
              f"  open  {link['ui']}",
              f"  or    POST {link['ack']}   (e.g. curl -X POST {link['ack']})"]
    return "\n".join(lines) + "\n"


def _payload_incident(incident: dict[str, Any]) -> dict[str, Any]:
    """A stable subset of the incident: known keys only, members capped."""
    doc = {key: incident.get(key) for key in _INCIDENT_KEYS}
    members = list(incident.get("members") or [])
    doc["member_count"] = int(incident.get("member_count") or len(members))
    doc["members"] = [{key: m.get(key) for key in _MEMBER_KEYS} for m in members[:MAX_PAYLOAD_MEMBERS]]
    return doc
