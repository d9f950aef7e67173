"""Silences (maintenance windows): matchers over device, district, kind, rule and category."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ioc.alerts.model import Alert, iso

logger = logging.getLogger(__name__)
MATCHER_FIELDS = ("device_id", "district", "kind", "rule", "category")


@dataclass(slots=True)
class Silence:
    """Quiet the alerts that match every given matcher, from ``starts_at`` until ``ends_at``."""

    id: int
    matchers: dict[str, str]
    starts_at: datetime
    ends_at: datetime
    reason: str
    author: str
    created_at: datetime | None = None
    deleted_at: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def active(self, now: datetime) -> bool:
        return self.deleted_at is None and self.starts_at <= now < self.ends_at

    def matches(self, alert: Alert) -> bool:
        return all(getattr(alert, name) == value for name, value in self.matchers.items())

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "matchers": self.matchers, "starts_at": iso(self.starts_at),
                "ends_at": iso(self.ends_at), "reason": self.reason, "author": self.author,
                "created_at": iso(self.created_at), "deleted_at": iso(self.deleted_at)}


def validate_matchers(matchers: dict[str, Any]) -> dict[str, str]:
    """Check matcher names; at least one is required (an empty silence would mute the whole city)."""
    unknown = set(matchers) - set(MATCHER_FIELDS)
    if unknown:
        raise ValueError(f"unknown matcher(s) {sorted(unknown)}; use {', '.join(MATCHER_FIELDS)}")
    clean = {k: str(v) for k, v in matchers.items() if v not in (None, "")}
    if not clean:
        raise ValueError("a silence needs at least one matcher")
    return clean


def usable_silence(row: dict[str, Any]) -> Silence | None:
    """A stored silence as the engine uses it, or None (logged) when its matchers do not validate any more (an
    older version's or a hand edit's): on a field alerts do not have, every tick raised; not an object, the
    engine did not load; empty, it would mute the whole city (found by tests/integration/test_action_fuzz.py)."""
    try:
        matchers = validate_matchers(row["matchers"])
    except (ValueError, TypeError, AttributeError) as err:
        logger.warning("silence %s not used: its matchers %r: %s", row.get("id"), row.get("matchers"), err)
        return None
    return Silence(**(row | {"matchers": matchers}))


def silencing(silences: list[Silence], alert: Alert, now: datetime) -> Silence | None:
    """The first active silence matching the alert."""
    for s in silences:
        if s.active(now) and s.matches(alert):
            return s
    return None
