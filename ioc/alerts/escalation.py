"""Escalation: policies (who is paged, after how long, how often) and the on-call roster (shifts).

A policy is a list of steps ``{"after_min": N, "level": L}``: N minutes after the incident opened,
page the officers on duty at level L. After the last step the steps run again ``repeat`` times,
counted from the last step. Everything stops when the incident is acknowledged or resolved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ioc.alerts.model import Incident, Severity, rank

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Policy:
    """One escalation policy."""

    id: str
    name: str
    min_severity: Severity
    steps: list[dict[str, Any]]
    repeat: int = 0
    channels: list[str] = field(default_factory=lambda: ["email", "webhook"])

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "min_severity": self.min_severity.value, "steps": self.steps,
                "repeat": self.repeat, "channels": self.channels}


#: Used when no policy is configured: page level 1 at once, level 2 after 15 minutes.
DEFAULT_POLICY = Policy("default", "Default: level 1 now, level 2 after 15 min", Severity.MINOR,
                        [{"after_min": 0, "level": 1}, {"after_min": 15, "level": 2}])


@dataclass(slots=True)
class Shift:
    """An officer on duty at ``level`` between two instants."""

    id: int
    officer_id: str
    level: int
    starts_at: datetime
    ends_at: datetime


def policy_for(policies: list[Policy], incident: Incident) -> Policy | None:
    """The most specific policy covering the incident's severity (highest min_severity that applies)."""
    fitting = [p for p in (policies or [DEFAULT_POLICY]) if rank(incident.severity) >= rank(p.min_severity)]
    return max(fitting, key=lambda p: rank(p.min_severity)) if fitting else None


def on_duty(shifts: list[Shift], level: int, now: datetime) -> list[str]:
    """Officer ids on duty at ``level`` now (falls back to lower levels when a level is unstaffed)."""
    for lvl in range(level, 0, -1):
        found = sorted({s.officer_id for s in shifts if s.level == lvl and s.starts_at <= now < s.ends_at})
        if found:
            return found
    return []


def start(incident: Incident, policy: Policy, now: datetime) -> None:
    """Arm escalation for a newly paging incident: the first step is due now (a reopening stays noted)."""
    reopened = incident.escalation.get("reopened")
    incident.escalation = {"policy": policy.id, "step": 0, "cycle": 0, "base": now.isoformat(),
                           "next_due": (now + timedelta(minutes=float(policy.steps[0]["after_min"]))).isoformat()}
    if reopened:
        incident.escalation["reopened"] = reopened


def due(incident: Incident, policy: Policy, now: datetime) -> dict[str, Any] | None:
    """If a step is due, advance the schedule and return that step; else None."""
    esc = incident.escalation
    if not esc or "next_due" not in esc or datetime.fromisoformat(esc["next_due"]) > now:
        return None
    step_index, cycle = int(esc["step"]), int(esc["cycle"])
    step = policy.steps[step_index]
    nxt = step_index + 1
    base = datetime.fromisoformat(esc["base"])
    if nxt < len(policy.steps):
        esc.update(step=nxt, next_due=(base + timedelta(minutes=float(policy.steps[nxt]["after_min"]))).isoformat())
    elif int(esc["cycle"]) < policy.repeat:
        # Run the steps again, as if the incident had opened when the last step went out.
        gap = float(policy.steps[-1]["after_min"]) - float(policy.steps[-2]["after_min"]) \
            if len(policy.steps) > 1 else float(policy.steps[-1]["after_min"]) or 15.0
        new_base = now + timedelta(minutes=max(gap, 1.0)) - timedelta(minutes=float(policy.steps[0]["after_min"]))
        esc.update(step=0, cycle=int(esc["cycle"]) + 1, base=new_base.isoformat(),
                   next_due=(new_base + timedelta(minutes=float(policy.steps[0]["after_min"]))).isoformat())
    else:
        esc.pop("next_due", None)
        esc["done"] = True
    return {**step, "cycle": cycle, "first": step_index == 0 and cycle == 0}


def stop(incident: Incident, why: str) -> None:
    """No more pages for this incident."""
    if incident.escalation:
        incident.escalation.pop("next_due", None)
        incident.escalation["stopped"] = why


#: The latest a step may come (minutes): NaN, infinities and 1e308 were stored and made every tick raise.
MAX_AFTER_MIN = 366 * 24 * 60.0


def validate_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Steps must be non-empty, with non-decreasing ``after_min`` in [0, a year] and levels 1-9."""
    if not steps:
        raise ValueError("a policy needs at least one step")
    clean, last = [], -1.0
    for s in steps:
        after, level = float(s.get("after_min", 0)), s.get("level", 1)
        if not 0.0 <= after <= MAX_AFTER_MIN or not float(level).is_integer() or not 1 <= level <= 9:
            raise ValueError(f"after_min must be 0 to {MAX_AFTER_MIN:.0f} minutes and level 1 to 9")
        level = int(level)
        if after < last:
            raise ValueError("steps need non-decreasing after_min")
        clean.append({"after_min": after, "level": level})
        last = after
    return clean


def usable_policy(row: dict[str, Any]) -> bool:
    """A stored policy whose steps no longer validate (stored before the API refused them: NaN, 1e308) is left out
    with a warning: kept, it made every tick's escalation raise and nothing was judged. So is one for a severity
    the engine does not know, or whose channels are not a list of names (a hand edit's): its severity kept the
    engine from loading at all (found by tests/integration/test_action_fuzz.py)."""
    try:
        validate_steps(row["steps"])
        Severity(row["min_severity"])
        channels = row["channels"]
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ValueError(f"channels {channels!r} are not a list of names")
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        logger.warning("escalation policy %r not used: %s", row.get("id"), err)
        return False
    return True
