"""Incident grouping: which live incident a newly firing alert belongs to, and incident titles.

One incident per real-world cause:
- power: every BTS of a district on battery (and the BTS that then go offline) is one incident;
- offline: devices of one kind going offline together in one district;
- traffic: jams on sensors near each other (within ``traffic_radius_km``) spread into one incident;
- a camera or traffic sensor fault that starts beside a live power incident (same district, within
  ``link_radius_km`` of a member, within ``link_window_s``) is linked into it;
- anything else is its own incident.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ioc.alerts.model import Alert, Incident


@dataclass(frozen=True, slots=True)
class CorrelationConfig:
    """Distances and windows used to group alerts."""

    traffic_radius_km: float = 2.5
    link_radius_km: float = 1.0
    link_window_s: float = 600.0


def group_key(alert: Alert) -> str:
    """The incident key an alert would open if it joins nothing."""
    if alert.category == "power":
        return f"power:{alert.district or '-'}"
    if alert.rule == "device_offline":
        return f"offline:{alert.kind}:{alert.district or '-'}"
    return f"{alert.category}:{alert.key}"


def choose_incident(alert: Alert, live: Iterable[Incident], members: dict[int, Alert],
                    cfg: CorrelationConfig) -> Incident | None:
    """The live incident ``alert`` joins, or None to open a new one (``members``: alert id -> alert)."""
    live = list(live)
    key = group_key(alert)
    # A BTS going offline while its district is on battery is explained by the power incident.
    if alert.kind == "bts" and alert.category in ("offline", "power"):
        for inc in live:
            if inc.group_key == f"power:{alert.district or '-'}":
                return inc
    for inc in live:
        if inc.group_key == key:
            return inc
    if alert.category == "traffic":
        for inc in live:
            if inc.category == "traffic" and _near(alert, (members[m] for m in inc.members if m in members),
                                                   cfg.traffic_radius_km):
                return inc
    if alert.category in ("camera", "traffic", "offline"):
        for inc in live:
            if inc.category != "power" or alert.district is None or inc.district != alert.district:
                continue
            if abs((alert.started_at - inc.started_at).total_seconds()) > cfg.link_window_s and not any(
                    abs((alert.started_at - members[m].started_at).total_seconds()) <= cfg.link_window_s
                    for m in inc.members if m in members):
                continue
            if _near(alert, (members[m] for m in inc.members if m in members), cfg.link_radius_km):
                return inc
    return None


def inhibits(incident: Incident, alert: Alert) -> bool:
    """True when the incident explains the alert, so the alert alone must not page anyone."""
    return incident.category == "power" and alert.category != "power"


def title_of(incident: Incident, members: list[Alert], district_name: str | None) -> str:
    """A headline an officer understands at a glance."""
    where = f" in {district_name or incident.district}" if (district_name or incident.district) else ""
    live = [a for a in members if a.live] or members
    if incident.category == "power":
        n = len({a.device_id for a in live if a.category == "power"})
        off = len({a.device_id for a in live if a.rule == "device_offline"})
        linked = len({a.device_id for a in live if a.kind != "bts"})
        text = f"Mains power lost at {n} BTS{where}"
        if off:
            text += f", {off} offline"
        if linked:
            text += f" (+{linked} linked device{'s' if linked > 1 else ''})"
        return text
    if incident.category == "offline" and len(live) > 1:
        kind = live[0].kind or "device"
        return f"{len(live)} {_plural(kind)} offline{where}"
    if incident.category == "traffic" and len(live) > 1:
        return f"Traffic jam spreading over {len(live)} sensors{where}"
    return members[0].title + (where if where and where not in members[0].title else "")


def _plural(kind: str) -> str:
    return {"bts": "BTS", "camera": "cameras", "traffic": "traffic sensors"}.get(kind, f"{kind}s")


def _near(alert: Alert, others: Iterable[Alert], radius_km: float) -> bool:
    if alert.lat is None or alert.lon is None:
        return any(o.district == alert.district and alert.district for o in others)
    return any(o.lat is not None and o.lon is not None and distance_km(alert.lat, alert.lon, o.lat, o.lon) <= radius_km
               for o in others)


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0 * 2 * math.asin(min(1.0, math.sqrt(a)))
