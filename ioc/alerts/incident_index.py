"""The engine's incidents indexed by what correlation looks up, so that a burst of new alerts stays linear.

:func:`ioc.alerts.correlate.choose_incident` takes the first live incident, in the engine's order, that an alert
belongs to; it scans every live incident (and for traffic and power links every member) per alert, and the
engine's reopen looked through every incident held: 12,000 new alerts in one step took seconds to minutes,
growing with the square of the burst. :class:`IncidentIndex` gives the same answers from lookups:

* incidents by group key (a district's power incident, an alert's own key), in the engine's order;
* the power incidents of each district (links), the traffic incidents of each road (``traffic:road:<road>:``);
* members' positions in grid cells sized to the radius asked (traffic spread, road, power link): a query reads
  the cells that can hold a point within the radius, then measures each candidate as before (haversine);
* members' start times sorted (a link's time window is met by the nearest start);
* resolved incidents by group key and by device for the reopen.

It lives for one engine call (``observe`` or ``tick``): built on the call's first new alert (linear in what the
engine holds, as one scan was), kept up to date as that call opens incidents and adds members
(:meth:`opened`, :meth:`joined`), dropped when the call ends, so officers' actions, loads and undone steps
between calls cannot leave it stale. States are read at query time (an incident the call reopens is found).
Where the grid cannot bound a distance (a coordinate that is not a finite point on the globe, a radius of
thousands of km, a window across the antimeridian or a pole) the choice falls back to the scan itself.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ioc.alerts.correlate import CorrelationConfig, _near, choose_incident, distance_km, group_key
from ioc.alerts.model import Alert, Incident, State

_EARTH_KM = 6371.0  # the sphere of correlate.distance_km
_KM_PER_DEG = _EARTH_KM * math.pi / 180.0
_ROAD = "traffic:road:"
SCAN_FIRST = 8
"""Questions about one incident's members a call answers by scanning them before it indexes them."""


class _Unindexable(Exception):
    """The grid cannot bound this query: answer it by the scan."""


def _finite_point(lat: Any, lon: Any) -> bool:
    return math.isfinite(lat) and math.isfinite(lon) and -90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0


def _window(lat: float, lon: float, radius_km: float) -> tuple[float, float]:
    """Half-widths in degrees (latitude, longitude) of a box holding every point within ``radius_km`` of (lat, lon).

    Haversine: ``a = sin²(dφ/2) + cos φ1 cos φ2 sin²(dλ/2)`` and ``d = 2R asin(√a)``, so ``d >= R|dφ|`` and
    ``d <= r`` needs ``sin²(dλ/2) <= sin²(r/2R) / (cos φ1 cos φ2)`` with ``|φ2| <= |φ1| + r/R``. Widened a little
    for rounding: a candidate too many is measured, none is missed.
    """
    if not (0.0 <= radius_km < 5000.0):
        raise _Unindexable
    ang = radius_km / _EARTH_KM
    top = math.radians(abs(lat)) + ang * (1 + 1e-6) + 1e-9
    if top >= math.pi / 2 - 1e-6:
        raise _Unindexable
    s = math.sin(ang / 2) / math.sqrt(math.cos(math.radians(lat)) * math.cos(top))
    if s >= 1.0:
        raise _Unindexable
    dlat = math.degrees(ang) * (1 + 1e-6) + 1e-7
    dlon = math.degrees(2 * math.asin(s)) * (1 + 1e-6) + 1e-7
    if lon - dlon <= -180.0 or lon + dlon >= 180.0:
        raise _Unindexable
    return dlat, dlon


class _Grid:
    """Items at points, in square cells of about ``radius_km``; :meth:`around` yields those that may be within it."""

    __slots__ = ("cell", "cells", "radius_km")

    def __init__(self, radius_km: float) -> None:
        self.radius_km = radius_km
        self.cell = max(radius_km, 0.05) / _KM_PER_DEG if math.isfinite(radius_km) else 1.0
        self.cells: dict[tuple[int, int], list[Any]] = {}

    def add(self, lat: float, lon: float, item: Any) -> None:
        key = (math.floor(lat / self.cell), math.floor(lon / self.cell))
        self.cells.setdefault(key, []).append(item)

    def around(self, lat: float, lon: float) -> Iterator[Any]:
        dlat, dlon = _window(lat, lon, self.radius_km)
        c, cells = self.cell, self.cells
        for i in range(math.floor((lat - dlat) / c), math.floor((lat + dlat) / c) + 1):
            for j in range(math.floor((lon - dlon) / c), math.floor((lon + dlon) / c) + 1):
                yield from cells.get((i, j), ())


class _Members:
    """One incident's members as the correlation's ``_near`` and link window read them.

    The first :data:`SCAN_FIRST` questions in a call are answered by a scan (as before: a step with a few new
    alerts pays nothing to index an incident of thousands); later ones from a grid and a sorted list.
    """

    __slots__ = ("alerts", "districts", "grids", "odd", "scans", "starts")

    def __init__(self, alerts: list[Alert]) -> None:
        self.alerts = alerts
        self.scans = 0
        self.districts: set[Any] | None = None
        self.odd = False  # a member's position is not a finite point on the globe (seen when a grid is built)
        self.grids: dict[float, _Grid] = {}
        self.starts: list[datetime] | None = None

    def _scan(self) -> bool:
        self.scans += 1
        return self.scans <= SCAN_FIRST

    def add(self, alert: Alert) -> None:
        self.alerts.append(alert)
        if self.districts is not None:
            self.districts.add(alert.district)
        if alert.lat is not None and alert.lon is not None:
            if not _finite_point(alert.lat, alert.lon):
                self.odd = True
            else:
                for grid in self.grids.values():
                    grid.add(alert.lat, alert.lon, alert)
        if self.starts is not None:
            self.starts.insert(bisect_left(self.starts, alert.started_at), alert.started_at)

    def near(self, alert: Alert, radius_km: float) -> bool:
        """``correlate._near(alert, members, radius_km)``."""
        grid = self.grids.get(radius_km)
        if grid is None and self._scan():
            return _near(alert, self.alerts, radius_km)
        if alert.lat is None or alert.lon is None:
            if self.districts is None:
                self.districts = {a.district for a in self.alerts}
            return bool(alert.district) and alert.district in self.districts
        if grid is None:
            grid = self.grids[radius_km] = _Grid(radius_km)
            for a in self.alerts:
                if a.lat is not None and a.lon is not None:
                    if _finite_point(a.lat, a.lon):
                        grid.add(a.lat, a.lon, a)
                    else:
                        self.odd = True
        if self.odd or not _finite_point(alert.lat, alert.lon):
            raise _Unindexable
        return any(distance_km(alert.lat, alert.lon, o.lat, o.lon) <= radius_km
                   for o in grid.around(alert.lat, alert.lon))

    def started_within(self, ts: datetime, window_s: float) -> bool:
        """Some member started within ``window_s`` of ``ts`` (the nearest start decides)."""
        if self.starts is None:
            if self._scan():
                return any(abs((ts - a.started_at).total_seconds()) <= window_s for a in self.alerts)
            self.starts = sorted(a.started_at for a in self.alerts)
        starts, i = self.starts, bisect_left(self.starts, ts)
        return any(abs((ts - starts[k]).total_seconds()) <= window_s for k in (i - 1, i) if 0 <= k < len(starts))


class _Traffic:
    """Every traffic incident's members in one grid (spread radius), by district, and the incidents by road."""

    __slots__ = ("by_district", "grid", "odd", "roads")

    def __init__(self, radius_km: float) -> None:
        self.grid = _Grid(radius_km)
        self.by_district: dict[Any, dict[int, Incident]] = {}
        self.roads: dict[str, list[Incident]] = {}
        self.odd = False

    def opened(self, inc: Incident) -> None:
        if inc.group_key.startswith(_ROAD):  # under every road its key can be read as (roads may hold ':')
            rest = inc.group_key[len(_ROAD):]
            for k, ch in enumerate(rest):
                if ch == ":":
                    self.roads.setdefault(rest[:k], []).append(inc)

    def joined(self, inc: Incident, pos: int, alert: Alert) -> None:
        self.by_district.setdefault(alert.district, {})[inc.id] = inc
        if alert.lat is not None and alert.lon is not None:
            if _finite_point(alert.lat, alert.lon):
                self.grid.add(alert.lat, alert.lon, (pos, inc, alert))
            else:
                self.odd = True


class IncidentIndex:
    """Correlation lookups over an engine's incidents for one engine call (see the module's docstring)."""

    def __init__(self, incidents: dict[int, Incident], alerts: dict[int, Alert], cfg: CorrelationConfig) -> None:
        self.incidents, self.alerts, self.cfg = incidents, alerts, cfg
        self._pos: dict[int, int] = {}  # incident id -> its place in the engine's order (the scan's order)
        self._by_key: dict[str, list[Incident]] = {}  # every state, in order
        self._power: dict[Any, list[Incident]] = {}  # power incidents by district, every state, in order
        self._members: dict[int, _Members] = {}
        self._traffic: _Traffic | None = None
        for inc in incidents.values():
            self.opened(inc)

    # --- kept up to date by the engine ---------------------------------------------------------------------

    def opened(self, inc: Incident) -> None:
        """``inc`` was added to the engine's incidents (after every incident held)."""
        self._pos[inc.id] = len(self._pos)
        self._by_key.setdefault(inc.group_key, []).append(inc)
        if inc.category == "power":
            self._power.setdefault(inc.district, []).append(inc)
        if self._traffic is not None and inc.category == "traffic":
            self._traffic.opened(inc)

    def joined(self, inc: Incident, alert: Alert) -> None:
        """``alert`` was appended to ``inc.members``."""
        members = self._members.get(inc.id)
        if members is not None:
            members.add(alert)
        if self._traffic is not None and inc.category == "traffic":
            self._traffic.joined(inc, self._pos[inc.id], alert)

    # --- queries ---------------------------------------------------------------------------------------------

    def choose(self, alert: Alert, road: str | None, device_incidents: set[int]) -> Incident | None:
        """``correlate.choose_incident(alert, live incidents, alerts, cfg, road, device_incidents)``."""
        try:
            return self._choose(alert, road, device_incidents)
        except _Unindexable:
            live = [i for i in self.incidents.values() if i.live]
            return choose_incident(alert, live, self.alerts, self.cfg, road, device_incidents)

    def reopen_candidate(self, alert: Alert, road: str | None, device_incidents: set[int], now: datetime,
                         within_s: float) -> Incident | None:
        """The latest incident to resolve within ``within_s`` whose group key is the alert's or that holds an
        alert of its device (``device_incidents``: the incident ids of the device's alerts); the first held of
        those resolved at the same time."""
        found: dict[int, Incident] = {}
        for inc in self._by_key.get(group_key(alert, road), ()):
            found[inc.id] = inc
        for i in device_incidents:
            held = self.incidents.get(i)
            if held is not None:
                found[held.id] = held
        recent = [inc for inc in found.values() if self.incidents.get(inc.id) is inc and inc.state == State.RESOLVED
                  and inc.resolved_at is not None and (now - inc.resolved_at).total_seconds() <= within_s]
        if not recent:
            return None
        return max(recent, key=lambda inc: (inc.resolved_at, -self._pos[inc.id]))

    def _choose(self, alert: Alert, road: str | None, device_incidents: set[int]) -> Incident | None:
        cfg = self.cfg
        if alert.kind == "bts" and alert.category in ("offline", "power") and alert.district:
            inc = self._first_live(self._by_key.get(f"power:{alert.district}", ()))
            if inc is not None:
                return inc
        if alert.device_id:
            held = [inc for i in device_incidents if (inc := self.incidents.get(i)) is not None and self._live(inc)]
            if held:
                return min(held, key=lambda inc: self._pos[inc.id])
        same_key = self._first_live(self._by_key.get(group_key(alert, road), ()))
        if same_key is not None:
            return same_key
        if alert.category == "traffic":
            spread = self._traffic_spread(alert, road)
            if spread is not None:
                return spread
        if alert.category in ("camera", "traffic", "offline") and alert.district is not None:
            for power in self._power.get(alert.district, ()):
                if not self._live(power):
                    continue
                members = self._members_of(power)
                if abs((alert.started_at - power.started_at).total_seconds()) > cfg.link_window_s and not (
                        members.started_within(alert.started_at, cfg.link_window_s)):
                    continue
                if members.near(alert, cfg.link_radius_km):
                    return power
        return None

    def _traffic_spread(self, alert: Alert, road: str | None) -> Incident | None:
        """The first live traffic incident on the alert's road within the road distance of a member, or within
        the spread radius of a member."""
        traffic = self._traffic_index()
        best: tuple[int, Incident] | None = None
        if alert.lat is None or alert.lon is None:
            if alert.district:
                held = [(self._pos[i], inc) for i, inc in traffic.by_district.get(alert.district, {}).items()
                        if self._live(inc)]
                best = min(held, key=lambda p: p[0], default=None)
        else:
            if traffic.odd or not _finite_point(alert.lat, alert.lon):
                raise _Unindexable
            radius = self.cfg.traffic_radius_km
            for pos, inc, other in traffic.grid.around(alert.lat, alert.lon):
                if (best is None or pos < best[0]) and self._live(inc) and distance_km(
                        alert.lat, alert.lon, other.lat, other.lon) <= radius:
                    best = (pos, inc)
        if road:
            for inc in traffic.roads.get(f"{road}", ()):  # in order: the first that holds is the road's answer
                pos = self._pos[inc.id]
                if best is not None and pos >= best[0]:
                    break
                if self._live(inc) and self._members_of(inc).near(alert, self.cfg.traffic_road_km):
                    best = (pos, inc)
                    break
        return best[1] if best is not None else None

    # --- helpers ---------------------------------------------------------------------------------------------

    def _live(self, inc: Incident) -> bool:
        return inc.live and self.incidents.get(inc.id) is inc

    def _first_live(self, incidents: Any) -> Incident | None:
        return next((inc for inc in incidents if self._live(inc)), None)

    def _members_of(self, inc: Incident) -> _Members:
        members = self._members.get(inc.id)
        if members is None:
            alerts = self.alerts
            members = self._members[inc.id] = _Members([alerts[m] for m in inc.members if m in alerts])
        return members

    def _traffic_index(self) -> _Traffic:
        if self._traffic is None:
            traffic = self._traffic = _Traffic(self.cfg.traffic_radius_km)
            alerts = self.alerts
            for inc in self.incidents.values():
                if inc.category == "traffic":
                    traffic.opened(inc)
                    pos = self._pos[inc.id]
                    for m in inc.members:
                        if m in alerts:
                            traffic.joined(inc, pos, alerts[m])
        return self._traffic
