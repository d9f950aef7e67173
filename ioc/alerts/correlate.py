"""Incident grouping: which live incident a newly firing alert belongs to, and incident titles.

One incident per real-world cause:
- an alert on a device that already has a live (or just resolved) alert in an incident joins it: one
  device, one problem at a time (the speed collapse, the odd occupancy and the stuck queue length of one
  jammed sensor are one incident);
- power: every BTS of a district on battery (and the BTS that then go offline) is one incident;
- offline: devices of one kind going offline together in one district;
- traffic: jams on sensors on the same road (within ``traffic_road_km`` of a live member) or near each
  other (within ``traffic_radius_km``) spread into one incident;
- a camera or traffic sensor fault that starts beside a live power incident (same district, within
  ``link_radius_km`` of a member, within ``link_window_s``) is linked into it;
- anything else is its own incident.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ioc.alerts.model import Alert, Incident, rank


@dataclass(frozen=True, slots=True)
class CorrelationConfig:
    """Distances and windows used to group alerts."""

    traffic_radius_km: float = 2.5
    traffic_road_km: float = 15.0
    link_radius_km: float = 1.0
    link_window_s: float = 600.0


def group_key(alert: Alert, road: str | None = None) -> str:
    """The incident key an alert would open if it joins nothing (``road``: the road a traffic sensor is on)."""
    # Without a known district there is nothing to group by: such a device stands alone, so that devices
    # whose positions are not known yet (a province's first minutes) do not merge into one city-wide incident.
    if alert.category == "power":
        return f"power:{alert.district}" if alert.district else f"power:device:{alert.device_id}"
    if alert.category == "offline":  # offline or silent: devices of one kind in one district together
        return (f"offline:{alert.kind}:{alert.district}" if alert.district
                else f"offline:{alert.kind}:device:{alert.device_id}")
    if alert.category == "traffic" and road:
        return f"traffic:road:{road}:{alert.key}"
    return f"{alert.category}:{alert.key}"


def choose_incident(alert: Alert, live: Iterable[Incident], members: dict[int, Alert],
                    cfg: CorrelationConfig, road: str | None = None,
                    device_incidents: set[int] | None = None) -> Incident | None:
    """The live incident ``alert`` joins, or None to open a new one (``members``: alert id -> alert).

    ``device_incidents``: the incidents holding a live or just resolved alert of the same device, when the
    caller indexes alerts by device (else every live incident's members are scanned for one).
    """
    live = list(live)
    key = group_key(alert, road)
    # A BTS going offline while its district is on battery is explained by the power incident.
    if alert.kind == "bts" and alert.category in ("offline", "power") and alert.district:
        for inc in live:
            if inc.group_key == f"power:{alert.district}":
                return inc
    if alert.device_id and device_incidents is not None:
        for inc in live:
            if inc.id in device_incidents:
                return inc
    elif alert.device_id:
        for inc in live:
            if any(same_device_recent(alert, members[m], cfg) for m in inc.members if m in members):
                return inc
    for inc in live:
        if inc.group_key == key:
            return inc
    if alert.category == "traffic":
        for inc in live:
            if inc.category != "traffic":
                continue
            others = [members[m] for m in inc.members if m in members]
            if road and inc.group_key.startswith(f"traffic:road:{road}:") and _near(alert, others,
                                                                                     cfg.traffic_road_km):
                return inc
            if _near(alert, others, cfg.traffic_radius_km):
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


def same_device_recent(alert: Alert, other: Alert, cfg: CorrelationConfig) -> bool:
    if other.device_id != alert.device_id:
        return False
    return other.live or (other.resolved_at is not None
                          and (alert.started_at - other.resolved_at).total_seconds() <= cfg.link_window_s)


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
    own = {a.device_id for a in live if a.category == incident.category}  # context members do not count
    if incident.category == "offline" and len(own) > 1:
        kind = live[0].kind or "device"
        return f"{len(own)} {_plural(kind)} offline{where}"
    if incident.category == "traffic" and len(own) > 1:
        return f"Traffic jam spreading over {len(own)} sensors{where}"
    # the worst live member speaks for the incident (members of another kind may have joined it)
    head = max(live, key=lambda a: (rank(a.severity), -a.id))
    return head.title + (where if where and where not in head.title else "")


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
