"""Incidents as the live feed carries them: members capped, with counts of what was left out.

The same cut as ``GET /api/incidents/live`` (:func:`ioc.cluster.views.bounded_views`, done there in SQL), done here
on the engine's own alerts for the frames the leader pushes: an incident of 20,000 members sent every member to
every screen at each change (megabytes per frame, encoded on the event loop).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ioc.alerts.model import LIVE, Alert, Incident, rank

T = TypeVar("T")
# Beyond the snapshot's most severe (then oldest) incidents: the newest unacknowledged critical ones. A backlog of
# thousands of old critical incidents filled the snapshot and a new critical alarm was left out of a screen that
# (re)connected after it: counted, never shown.
SNAPSHOT_NEWEST_CRITICAL = 10


def _keep_key(a: Alert) -> tuple[bool, int, Any, int]:
    """Kept first: live members, then the most severe, then the newest (as the REST route's SQL orders them)."""
    return a.state in LIVE, rank(a.severity), a.started_at, a.id


def bounded_members(inc: Incident, members: list[Alert], limit: int) -> tuple[list[Alert], dict[str, Any]]:
    """At most ``limit`` of ``members`` (the incident's alerts found), in the incident's order, and the fields that
    say what was left out: ``member_count`` (members listed), ``members_omitted``, ``members_truncated``,
    ``device_count`` (distinct devices of all members) and ``devices`` (the first ``limit`` by name)."""
    kept = members if len(members) <= limit else heapq.nlargest(limit, members, key=_keep_key)
    if kept is not members:
        order = {m: n for n, m in enumerate(inc.members)}
        kept.sort(key=lambda a: order.get(a.id, a.id))
    devices = sorted({a.device_id for a in members if a.device_id})
    return kept, {"member_count": len(inc.members), "members_omitted": len(members) - len(kept),
                  "members_truncated": len(members) > len(kept), "device_count": len(devices),
                  "devices": devices[:limit]}


def bounded_view(inc: Incident, members: list[Alert], limit: int, district_name: str | None,
                 member: Callable[[Alert], dict[str, Any]]) -> dict[str, Any]:
    """The incident as a screen shows it (``member`` turns an alert into a member entry), ``limit`` members at most."""
    kept, counts = bounded_members(inc, members, limit)
    return {**inc.to_dict(), "district_name": district_name, "members": [member(a) for a in kept], **counts}


def newest_critical(rest: Iterable[T], is_open_critical: Callable[[T], bool], started: Callable[[T], Any],
                    n: int = SNAPSHOT_NEWEST_CRITICAL) -> list[T]:
    """The ``n`` newest of ``rest`` (the live incidents a snapshot's cut left out) that are open (unacknowledged)
    and critical, newest first: a screen must show a new critical alarm whatever the backlog before it."""
    return heapq.nlargest(n, (i for i in rest if is_open_critical(i)), key=started)


def snapshot_section(views: Iterable[dict[str, Any]], total: int, limit: int) -> dict[str, Any]:
    """The snapshot's incident fields: the first ``limit`` of ``views`` (already most severe first, then the newest
    critical ones the cut left out), how many are live in all and whether some were left out."""
    shown = list(views)[:limit]
    return {"incidents": shown, "incidents_total": total, "incidents_truncated": total > len(shown)}
