"""The alert engine's incident index chooses exactly what the scan of every live incident chose.

Each test drives a real engine whose index is checked at every new alert against the straightforward
reference: :func:`ioc.alerts.correlate.choose_incident` over every live incident, and the reopen's scan of every
incident held (as the engine did before the index). Randomized storms cover what correlation looks at: districts'
power incidents, the same device coming back, group keys, traffic spreading by distance and along roads (road ids
with ':' too), links into power incidents by distance and by the time window of their members' starts, positions
unknown or not on the globe, officers acknowledging and resolving, incidents resolving and reopening.
"""

from __future__ import annotations

import contextlib
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ioc.alerts import correlate, incident_index
from ioc.alerts.correlate import CorrelationConfig, distance_km
from ioc.alerts.engine import AlertEngine, EngineConfig
from ioc.alerts.escalation import Shift
from ioc.alerts.incident_index import IncidentIndex, _Grid, _Unindexable
from ioc.alerts.model import Alert, AlertError, Incident, Severity, Signal, State

pytestmark = pytest.mark.unit

T0 = datetime(2026, 9, 14, 2, 0, tzinfo=UTC)
RULES = (("mains_power_lost", "bts"), ("battery_low", "bts"), ("device_offline", "bts"), ("device_offline", "camera"),
         ("device_silent", "camera"), ("device_silent", "traffic"), ("camera_fault", "camera"),
         ("camera_stream", "camera"), ("speed_collapse", "traffic"), ("kpi_degraded", "bts"), ("anomaly", "traffic"),
         ("anomaly", "bts"), ("sensor_stuck", "traffic"), ("door_open", "bts"))


def reference_reopen(eng: AlertEngine, alert: Alert, road: str | None, now: datetime,
                     within: float) -> Incident | None:
    """The engine's reopen candidate as it was: every incident held scanned."""
    key = correlate.group_key(alert, road)
    recent = [inc for inc in eng.incidents.values()
              if inc.state == State.RESOLVED and inc.resolved_at is not None
              and (now - inc.resolved_at).total_seconds() <= within
              and (inc.group_key == key or eng._had_device(inc, alert.device_id))]
    return max(recent, key=lambda inc: inc.resolved_at or now) if recent else None


class Checked(IncidentIndex):
    """The index, each answer compared with the reference's on the same engine state."""

    engine: AlertEngine
    stats: dict[str, int]

    def choose(self, alert: Alert, road: str | None, device_incidents: set[int]) -> Incident | None:
        got = super().choose(alert, road, device_incidents)
        live = [i for i in self.incidents.values() if i.live]
        want = correlate.choose_incident(alert, live, self.alerts, self.cfg, road, device_incidents)
        assert got is want, (alert, road, got, want)
        self.stats["choices"] += 1
        self.stats["joined"] += want is not None
        return got

    def reopen_candidate(self, alert: Alert, road: str | None, device_incidents: set[int], now: datetime,
                         within_s: float) -> Incident | None:
        got = super().reopen_candidate(alert, road, device_incidents, now, within_s)
        want = reference_reopen(self.engine, alert, road, now, within_s)
        assert got is want, (alert, got, want)
        self.stats["reopened"] += want is not None
        return got


class CheckedEngine(AlertEngine):
    def __init__(self, stats: dict[str, int], **kw: Any) -> None:
        super().__init__(**kw)
        self.stats = stats

    def _incident_index(self) -> IncidentIndex:
        if self._incidents_indexed is None:
            index = Checked(self.incidents, self.alerts, self.config.correlation)
            index.engine, index.stats = self, self.stats
            self._incidents_indexed = index
        return self._incidents_indexed


def _devices(rng: random.Random, n: int, odd: bool) -> dict[str, tuple[str, str | None, Any, Any]]:
    """Devices in three districts a few km across (so 1, 2.5 and 15 km all matter), some without a position."""
    out: dict[str, tuple[str, str | None, Any, Any]] = {}
    for i in range(n):
        kind = rng.choice(("bts", "bts", "camera", "traffic"))
        d = rng.randrange(3)
        lat: Any = 20.8 + d * 0.05 + rng.gauss(0, 0.03)
        lon: Any = 106.6 + rng.gauss(0, 0.03) + (rng.random() < 0.2) * rng.uniform(-0.3, 0.3)
        if rng.random() < 0.06:
            lat = lon = None
        elif rng.random() < 0.04:
            lat = None
        elif odd and rng.random() < 0.03:
            lat, lon = rng.choice(((math.nan, 106.6), (20.8, 200.0), (91.0, 106.6), (20.8, -179.99),
                                   (lat, lon + 360.0), (lat, lon - 360.0)))  # the haversine: the same place
        district = None if rng.random() < 0.05 else f"D{d}"
        out[f"{kind}-{i}"] = (kind, district, lat, lon)
    return out


def _road_of(lat: Any, lon: Any) -> str | None:
    if lat is None or lon is None:
        return "ql5"  # a road known without a position (GeoCity says None): the road check reads districts
    if not math.isfinite(lat) or not math.isfinite(lon):
        return None
    band = int((lat - 20.7) / 0.04)
    return (None, "ql5", "ql5:bis", "ql10", "ql")[band % 5] if band >= 0 else None


def _storm(seed: int, steps: int = 14, odd: bool = False, cfg: CorrelationConfig | None = None) -> dict[str, int]:
    rng = random.Random(seed)
    devices = _devices(rng, 160, odd)
    names = list(devices)
    stats = {"choices": 0, "joined": 0, "reopened": 0}
    eng = CheckedEngine(stats, config=EngineConfig(correlation=cfg or CorrelationConfig(), reopen_within_s=900,
                                                   close_after_s=1800), road_of=_road_of)
    eng.shifts = [Shift(1, "an", 1, T0 - timedelta(hours=1), T0 + timedelta(days=2))]
    t = 0.0
    for _ in range(steps):
        t += rng.choice((1, 20, 45, 130, 400, 700))
        now = T0 + timedelta(seconds=t)
        signals = []
        for _ in range(rng.randrange(5, 90)):
            dev = rng.choice(names)
            kind, district, lat, lon = devices[dev]
            rule = rng.choice([r for r, k in RULES if k == kind])
            ts = now - timedelta(seconds=rng.choice((0, 0, 30, 500, 700, 1300)))
            signals.append(Signal(rule, f"{rule}:{dev}", rng.random() < 0.8, ts, dev, kind, district,
                                  rng.choice(list(Severity)), f"{rule} at {dev}", "", {}, lat, lon))
        eng.observe(signals, now)
        if rng.random() < 0.3 and eng.incidents:
            inc = rng.choice(list(eng.incidents.values()))
            with contextlib.suppress(AlertError):
                (eng.resolve if rng.random() < 0.5 else eng.acknowledge)(inc.id, "an", None, now)
        eng.tick(now + timedelta(seconds=rng.choice((0, 31, 130))))
    return stats


@pytest.fixture(params=[0, incident_index.SCAN_FIRST], ids=["indexed", "scan-first"])
def scan_first(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Members indexed from an incident's first question in a call, or (as in service) after a few scans."""
    monkeypatch.setattr(incident_index, "SCAN_FIRST", request.param)
    return int(request.param)


@pytest.mark.parametrize("seed", range(40))
def test_randomized_storms_choose_the_incidents_the_scan_chose(seed: int, scan_first: int) -> None:
    stats = _storm(seed)
    assert stats["choices"] > 100 and stats["joined"] > 20


def test_storms_cover_joining_and_reopening(scan_first: int) -> None:
    totals = {"choices": 0, "joined": 0, "reopened": 0}
    for seed in range(100, 110):
        for k, v in _storm(seed, steps=20).items():
            totals[k] += v
    assert totals["reopened"] > 5 and totals["joined"] > 0.2 * totals["choices"]


@pytest.mark.parametrize("seed", range(12))
def test_positions_off_the_globe_are_answered_by_the_scan(seed: int, scan_first: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    scans = []
    real = incident_index.choose_incident
    monkeypatch.setattr(incident_index, "choose_incident", lambda *a: scans.append(1) or real(*a))
    stats = _storm(1000 + seed, odd=True)
    assert stats["choices"] > 100 and len(scans) < stats["choices"]


def test_a_device_back_reopens_the_first_held_of_its_incidents_resolved_together(scan_first: int) -> None:
    stats = {"choices": 0, "joined": 0, "reopened": 0}
    eng = CheckedEngine(stats)

    def sig(dev: str, rule: str, active: bool, t: float) -> Signal:
        return Signal(rule, f"{rule}:{dev}", active, T0 + timedelta(seconds=t), dev, "bts", "D1", Severity.MAJOR,
                      f"{rule} at {dev}", "", {}, 20.8, 106.6)

    eng.observe([sig("bts-2", "mains_power_lost", True, 0), sig("bts-1", "kpi_degraded", True, 0)], T0)
    eng.observe([sig("bts-1", "mains_power_lost", True, 5)], T0 + timedelta(seconds=5))  # joins power:D1
    power, kpi = sorted(eng.incidents.values(), key=lambda i: i.id)
    assert power.group_key == "power:D1" and len(power.members) == 2 and len(kpi.members) == 1
    clear = [sig(d, r, False, 60) for d, r in (("bts-1", "kpi_degraded"), ("bts-1", "mains_power_lost"),
                                                ("bts-2", "mains_power_lost"))]
    eng.observe(clear, T0 + timedelta(seconds=60))
    eng.tick(T0 + timedelta(seconds=60 + 600))  # both resolve in this tick
    assert power.state == kpi.state == State.RESOLVED and power.resolved_at == kpi.resolved_at
    eng.observe([sig("bts-1", "door_open", True, 1500)], T0 + timedelta(seconds=1500))
    assert power.live and not kpi.live and stats["reopened"] == 1


def test_a_member_joining_mid_call_counts_for_the_next_alert_of_its_district(scan_first: int) -> None:
    """Within one call: a jam on road ql5 in D1 spreads to a sensor in D2; a sensor of D2 with no position,
    on the same road, then joins it (the first incident on the road with a member in its district)."""
    stats = {"choices": 0, "joined": 0, "reopened": 0}
    eng = CheckedEngine(stats, road_of=_road_of)

    def jam(dev: str, district: str, lat: float | None, lon: float | None) -> Signal:
        return Signal("speed_collapse", f"speed_collapse:{dev}", True, T0, dev, "traffic", district,
                      Severity.MAJOR, "jam", "", {}, lat, lon)

    eng.observe([jam("t1", "D1", 20.75, 106.6), jam("n1", "D2", None, None), jam("t2", "D2", 20.755, 106.6),
                 jam("n2", "D2", None, None)], T0)
    road, other = sorted(eng.incidents.values(), key=lambda i: i.id)
    assert road.group_key == "traffic:road:ql5:speed_collapse:t1" and len(road.members) == 3
    assert other.group_key == "traffic:road:ql5:speed_collapse:n1" and len(other.members) == 1


def test_an_infinite_position_raises_where_the_scan_raised() -> None:
    """The haversine of an infinite longitude raises (the stage sets that signal aside): still so."""
    def sig(dev: str, rule: str, lon: float) -> Signal:
        return Signal(rule, f"{rule}:{dev}", True, T0, dev, "traffic", "D1", Severity.MAJOR, "", "", {}, 20.8, lon)

    for cls in (AlertEngine, CheckedEngine):
        eng = AlertEngine() if cls is AlertEngine else CheckedEngine({"choices": 0, "joined": 0, "reopened": 0})
        eng.observe([sig("a", "speed_collapse", math.inf)], T0)  # nothing to measure against yet
        with pytest.raises(ValueError, match="math domain error"):
            eng.observe([sig("b", "speed_collapse", 106.6)], T0)


@pytest.mark.parametrize("cfg", [CorrelationConfig(0.3, 4.0, 0.2, 60.0), CorrelationConfig(6.0, 40.0, 3.0, 1800.0),
                                 CorrelationConfig(0.0, 0.0, 0.0, 0.0)])
def test_other_radii_and_windows_choose_the_same(cfg: CorrelationConfig, scan_first: int) -> None:
    for seed in range(200, 206):
        _storm(seed, cfg=cfg)


def test_the_grid_never_misses_a_point_within_its_radius() -> None:
    rng = random.Random(5)
    checked = 0
    for _ in range(300):
        radius = rng.choice((0.0, 0.05, 1.0, 2.5, 15.0, 300.0))
        lat, lon = rng.uniform(-88, 88), rng.uniform(-179, 179)
        grid = _Grid(radius)
        points = []
        for _ in range(60):  # around the edge of the radius, some just inside
            bearing, km = rng.uniform(0, 2 * math.pi), radius * rng.uniform(0.9, 1.1)
            dlat = km / 111.195 * math.cos(bearing)
            dlon = km / 111.195 * math.sin(bearing) / max(0.05, math.cos(math.radians(lat)))
            p = (max(-90.0, min(90.0, lat + dlat)), max(-180.0, min(180.0, lon + dlon)))
            points.append(p)
            grid.add(*p, p)
        try:
            found = set(grid.around(lat, lon))
        except _Unindexable:
            continue
        within = {p for p in points if distance_km(lat, lon, *p) <= radius}
        assert within <= found
        checked += len(within)
    assert checked > 1000


def test_a_burst_costs_each_new_alert_the_same_whatever_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Incidents looked at per new alert do not grow with the burst (the scan looked at every live incident)."""
    looked = [0]
    live = Incident.live

    def counted(inc: Incident) -> bool:
        looked[0] += 1
        return live.fget(inc)  # type: ignore[attr-defined, no-any-return]

    monkeypatch.setattr(Incident, "live", property(counted))

    def burst(n: int) -> int:
        eng = AlertEngine()
        looked[0] = 0
        signals = [Signal("camera_fault", f"camera_fault:cam-{i}", True, T0, f"cam-{i}", "camera", f"D{i % 7}",
                          Severity.MAJOR, "fault", "", {}, 20.0 + (i % 7) * 0.3 + i * 1e-4, 106.0)
                   for i in range(n)]
        eng.observe(signals, T0)
        eng.tick(T0)
        assert len(eng.incidents) == n  # each its own incident: the scan's worst case
        return looked[0]

    small, large = burst(500), burst(2000)
    assert large < 6 * small, (small, large)  # linear: 4x; the scan: 16x
