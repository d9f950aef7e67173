"""Incidents: planning them from a scenario (scheduled or seeded random), their per-device effects, ground truth.

The plan is made once, up front, from the seed: every process of a run derives the same plan, and the
ground-truth file is written before the first message is sent.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from simulators.clock import iso_utc, parse_time
from simulators.scenario import CAMERA_FAULT_MODES, INCIDENT_KINDS, IncidentSpec
from simulators.signals import BATTERY_CUTOFF_PCT, BOOT_S, site_params, site_power

if TYPE_CHECKING:
    from simulators.city import City

logger = logging.getLogger(__name__)

#: Default (min, max) duration in simulated seconds per kind.
DURATIONS: dict[str, tuple[float, float]] = {
    "congestion": (1200, 3600), "accident": (1800, 5400), "power_outage": (3600, 14400),
    "bts_degradation": (1800, 7200), "camera_fault": (900, 3600), "device_silent": (600, 1800),
    "sensor_stuck": (1200, 3600),
}
_KIND_OF_TARGET = {"accident": "traffic", "congestion": "traffic", "sensor_stuck": "traffic",
                   "bts_degradation": "bts", "camera_fault": "camera"}


@dataclass(frozen=True, slots=True)
class Effect:
    """What one incident does to one device: from ``start`` (its onset there) to ``end``.

    ``role`` is ``origin`` / ``upstream`` / ``downstream`` (road incidents), ``view`` (a camera watching
    the jam), or ``member`` (everything else); ``hop`` counts sensors away from the origin.
    """

    incident_id: str
    kind: str
    start: float
    end: float
    role: str
    params: dict[str, Any]
    hop: int = 0


@dataclass(slots=True)
class Incident:
    """One labelled incident and its effects per device."""

    id: str
    kind: str
    start: float
    end: float
    params: dict[str, Any]
    district: str | None = None
    road: str | None = None
    effects: dict[str, Effect] = field(default_factory=dict)

    @property
    def devices(self) -> list[str]:
        """Devices whose own signals show the incident (cameras merely watching are in parameters)."""
        return [d for d, e in self.effects.items() if e.role != "view"]

    def ground_truth(self) -> dict[str, Any]:
        """The JSON-lines record: kind, devices, start, end, parameters (with per-device onsets)."""
        params = dict(self.params)
        onsets = {d: iso_utc(e.start) for d, e in self.effects.items() if e.start != self.start and e.role != "view"}
        if onsets:
            params["onset"] = onsets
        roles = {d: e.role for d, e in self.effects.items() if e.role not in ("member", "view")}
        if roles:
            params["roles"] = roles
        cams = [d for d, e in self.effects.items() if e.role == "view"]
        if cams:
            params["cameras"] = cams
        return {"id": self.id, "kind": self.kind, "start": iso_utc(self.start), "end": iso_utc(self.end),
                "devices": self.devices, "district": self.district, "road": self.road, "parameters": params}


def _when(spec: IncidentSpec, t0: float, t1: float, rng: random.Random) -> float:
    if spec.at is None:
        return t0 + (t1 - t0) * rng.uniform(0.05, 0.6)
    if isinstance(spec.at, str):
        return parse_time(spec.at)
    return t0 + float(spec.at)


def plan_incidents(city: City, t0: float, t1: float) -> list[Incident]:
    """Plan the scenario's scheduled and random incidents over the simulated span [t0, t1]."""
    scenario = city.scenario
    rng = random.Random(f"incidents:{scenario.seed}")
    specs = list(scenario.incidents)
    kinds = scenario.random_incidents.kinds or list(INCIDENT_KINDS)
    specs += [IncidentSpec(kind=rng.choice(kinds)) for _ in range(scenario.random_incidents.count)]
    out: list[Incident] = []
    for i, spec in enumerate(specs, start=1):
        start = _when(spec, t0, t1, rng)
        lo, hi = DURATIONS[spec.kind]
        duration = spec.duration_s or min(rng.uniform(lo, hi), max(10.0, 0.4 * (t1 - t0)))
        try:
            inc = _build(city, spec, f"inc-{i:03d}", start, start + duration, rng)
        except LookupError as err:
            if spec in scenario.incidents:
                raise ValueError(f"incident {i} ({spec.kind}): {err}") from None
            logger.warning("skipping random %s incident: %s", spec.kind, err)
            continue
        out.append(inc)
    _outage_timeline(city, out)
    return sorted(out, key=lambda x: (x.start, x.id))


def _pick(city: City, kind: str, spec: IncidentSpec, rng: random.Random) -> str:
    if spec.device:
        dev_id = city.resolve_id(spec.device)
        if kind and city.device(dev_id).kind != kind:
            raise LookupError(f"{dev_id} is not a {kind} device")
        return dev_id
    pool = [d.id for d in city.devices if not kind or d.kind == kind]
    if not pool:
        raise LookupError(f"no {kind or 'device'} in this city")
    return rng.choice(pool)


def _build(city: City, spec: IncidentSpec, inc_id: str, start: float, end: float, rng: random.Random) -> Incident:
    kind = spec.kind
    params = dict(spec.params)
    if kind in ("congestion", "accident"):
        return _road_incident(city, spec, inc_id, start, end, params, rng)
    if kind == "power_outage":
        return _outage(city, spec, inc_id, start, end, params, rng)
    dev_id = _pick(city, _KIND_OF_TARGET.get(kind, ""), spec, rng)
    if kind == "camera_fault":
        params.setdefault("mode", rng.choice(CAMERA_FAULT_MODES))
        if params["mode"] not in CAMERA_FAULT_MODES:
            raise LookupError(f"camera fault mode must be one of {CAMERA_FAULT_MODES}")
    elif kind == "bts_degradation":
        params.setdefault("drop_call_rate_pct", round(rng.uniform(4.0, 10.0), 1))
        params.setdefault("report_status", False)
    elif kind == "device_silent":
        params.setdefault("disconnect", rng.random() < 0.5)
    dev = city.device(dev_id)
    inc = Incident(inc_id, kind, start, end, params, dev.district, dev.road)
    inc.effects[dev_id] = Effect(inc_id, kind, start, end, "member", params)
    return inc


def _road_incident(city: City, spec: IncidentSpec, inc_id: str, start: float, end: float,
                   params: dict[str, Any], rng: random.Random) -> Incident:
    kind = spec.kind
    if spec.device:
        origin = city.device(_pick(city, "traffic", spec, rng))
    else:
        sensors = [d for d in city.by_kind("traffic") if (spec.road is None or d.road == spec.road)]
        with_up = [d for d in sensors if d.upstream] or sensors
        if not with_up:
            raise LookupError("no traffic sensor to put it on")
        origin = rng.choice(with_up)
    hops = int(params.setdefault("spread_hops", 3 if kind == "accident" else rng.randint(2, 4)))
    hop_s = float(params.setdefault("hop_s", 180.0 if kind == "accident" else 240.0))
    params.setdefault("severity", 0.9 if kind == "accident" else round(rng.uniform(0.5, 0.8), 2))
    inc = Incident(inc_id, kind, start, end, params, origin.district, origin.road)
    inc.effects[origin.id] = Effect(inc_id, kind, start, end, "origin", params, 0)
    cur, hop = origin, 0
    # The queue grows backwards (upstream), one sensor every hop_s: this is what "spreading" looks like.
    while cur.upstream and hop < hops and start + (hop + 1) * hop_s < end:
        hop += 1
        cur = city.device(cur.upstream)
        inc.effects[cur.id] = Effect(inc_id, kind, start + hop * hop_s, end, "upstream", params, hop)
    if kind == "accident" and origin.downstream:
        inc.effects[origin.downstream] = Effect(inc_id, kind, min(end, start + 60.0), end, "downstream", params, 1)
    for cam in city.by_kind("camera"):
        seen = [inc.effects[n] for n in cam.neighbours if n in inc.effects and inc.effects[n].role != "downstream"]
        if seen:
            first = min(seen, key=lambda e: e.start)
            inc.effects[cam.id] = Effect(inc_id, kind, first.start, end, "view", params, first.hop)
    return inc


def _outage(city: City, spec: IncidentSpec, inc_id: str, start: float, end: float, params: dict[str, Any],
            rng: random.Random) -> Incident:
    sites = city.sites()
    by_district: dict[str, list[str]] = {}
    for site, cells in sites.items():
        by_district.setdefault(city.device(cells[0]).district, []).append(site)
    if spec.district:
        if spec.district not in by_district:
            raise LookupError(f"district {spec.district!r} has no BTS site")
        district = spec.district
    elif spec.device:
        district = city.device(_pick(city, "bts", spec, rng)).district
    elif by_district:
        district = rng.choice(sorted(by_district))
    else:
        raise LookupError("no BTS site in this city")
    share = float(params.setdefault("share", 1.0))
    chosen = sorted(by_district[district])
    if share < 1.0:
        chosen = sorted(rng.sample(chosen, max(1, round(share * len(chosen)))))
    inc = Incident(inc_id, "power_outage", start, end, params, district)
    for site in chosen:
        for cell in sites[site]:
            inc.effects[cell] = Effect(inc_id, "power_outage", start, end, "member", params)
    return inc


def _outage_timeline(city: City, incidents: list[Incident]) -> None:
    """Add to each outage when each cell goes offline (battery exhausted) and comes back, as ground truth."""
    seed = city.scenario.seed
    outages: dict[str, list[tuple[float, float]]] = {}
    for inc in incidents:
        if inc.kind == "power_outage":
            for cell in inc.devices:
                outages.setdefault(cell, []).append((inc.start, inc.end))
    for inc in incidents:
        if inc.kind != "power_outage":
            continue
        offline: dict[str, str] = {}
        back: dict[str, str] = {}
        for dev_id in inc.devices:
            dev = city.device(dev_id)
            autonomy, battery0 = site_params(seed, dev.site or dev_id, city.districts[dev.district].urban)
            autonomy = float(inc.params.get("autonomy_h") or autonomy)  # a scenario may force short batteries
            before = site_power(inc.start, [o for o in outages[dev_id] if o[0] < inc.start], autonomy, battery0)
            dies = inc.start + (before.battery_pct - BATTERY_CUTOFF_PCT) / (100.0 / autonomy) * 3600
            if dies < inc.end:
                offline[dev_id] = iso_utc(dies)
                back[dev_id] = iso_utc(inc.end + BOOT_S)
        inc.params["offline_at"] = offline
        inc.params["online_again_at"] = back


def effects_by_device(incidents: list[Incident]) -> dict[str, list[Effect]]:
    """Device id -> its effects, in start order."""
    out: dict[str, list[Effect]] = {}
    for inc in incidents:
        for dev_id, eff in inc.effects.items():
            out.setdefault(dev_id, []).append(eff)
    for effs in out.values():
        effs.sort(key=lambda e: e.start)
    return out


def write_ground_truth(path: str | Path, incidents: list[Incident]) -> Path:
    """Write one JSON line per incident (see docs/simulator.md); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("wb") as fh:
        for inc in incidents:
            fh.write(orjson.dumps(inc.ground_truth()) + b"\n")
    return p
