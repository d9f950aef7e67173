"""Incidents: planning (scheduled and seeded random), ground truth, and what they do to the signals."""

from __future__ import annotations

import itertools
import statistics

import orjson
import pytest

from simulators.city import City, build_city
from simulators.clock import iso_utc, parse_time
from simulators.fleet import Control, Fleet, FleetOptions, Message
from simulators.incidents import plan_incidents, write_ground_truth
from simulators.scenario import IncidentSpec, RandomIncidents, Scenario

pytestmark = pytest.mark.unit

T0 = parse_time("2025-11-18T10:00:00+07:00")
SPAN = 4 * 3600


def _city(*specs: IncidentSpec, **kw: object) -> City:
    return build_city(Scenario(cameras=0, incidents=list(specs), **kw))  # type: ignore[arg-type]


def _telemetry(city: City, ids: set[str], until: float, wills: bool = False) -> list[Message | Control]:
    incidents = plan_incidents(city, T0, T0 + SPAN)
    fleet = Fleet(city, [d for d in city.devices if d.id in ids], incidents, FleetOptions(wills=wills))
    return fleet.start(T0) + list(fleet.advance(until))


def _series(outs: list[Message | Control], dev: str, metric: str) -> list[tuple[float, float]]:
    rows = [orjson.loads(m.payload) for m in outs if isinstance(m, Message) and m.device_id == dev
            and m.channel == "telemetry"]
    return [(r["ts"] / 1000, r["metrics"][metric]) for r in rows]


def test_scheduled_accident_spreads_upstream_and_is_in_ground_truth(tmp_path) -> None:
    base = build_city(Scenario(cameras=0))
    origin = next(d for d in base.by_kind("traffic") if d.upstream and base.device(d.upstream).upstream)
    spec = IncidentSpec(kind="accident", device=origin.id.removeprefix("HP-"), at=600, duration_s=3600,
                        params={"hop_s": 300})
    city = _city(spec)
    (inc,) = plan_incidents(city, T0, T0 + SPAN)
    up1 = origin.upstream
    assert inc.kind == "accident" and inc.devices[:2] == [origin.id, up1]
    assert inc.start == T0 + 600 and inc.end == T0 + 4200
    path = write_ground_truth(tmp_path / "gt.jsonl", [inc])
    (line,) = [orjson.loads(x) for x in path.read_bytes().splitlines()]
    assert set(line) >= {"id", "kind", "devices", "start", "end", "parameters"}
    assert line["start"] == iso_utc(T0 + 600) and line["parameters"]["onset"][up1] == iso_utc(T0 + 900)
    assert line["parameters"]["roles"][origin.id] == "origin"

    outs = _telemetry(city, {origin.id, up1}, T0 + 2400)
    speed = _series(outs, origin.id, "speed_kmh")
    before = statistics.fmean(v for t, v in speed if t < T0 + 600)
    during = statistics.fmean(v for t, v in speed if T0 + 780 <= t < T0 + 2400)
    assert during < 0.3 * before
    occ = _series(outs, origin.id, "occupancy_pct")
    assert statistics.fmean(v for t, v in occ if t >= T0 + 780) > 60
    up_speed = _series(outs, up1, "speed_kmh")
    # The queue reaches the upstream sensor only after hop_s.
    assert statistics.fmean(v for t, v in up_speed if T0 + 600 <= t < T0 + 880) > 2 * statistics.fmean(
        v for t, v in up_speed if T0 + 1300 <= t < T0 + 2400)


def test_random_incidents_are_deterministic_per_seed() -> None:
    def plan(seed: int) -> list[dict[str, object]]:
        city = build_city(Scenario(seed=seed, random_incidents=RandomIncidents(count=8)))
        return [i.ground_truth() for i in plan_incidents(city, T0, T0 + SPAN)]

    assert plan(4) == plan(4) and plan(4) != plan(5)
    assert len(plan(4)) == 8 and all(T0 <= parse_time(x["start"]) < T0 + SPAN for x in plan(4))  # type: ignore[arg-type]


def test_power_outage_drains_batteries_then_sites_go_offline() -> None:
    city = _city(IncidentSpec(kind="power_outage", district="LC", at=0, duration_s=3 * 3600))
    (inc,) = plan_incidents(city, T0, T0 + SPAN)
    cells = set(inc.devices)
    assert cells == {d.id for d in city.by_kind("bts") if d.district == "LC"}
    assert inc.params["offline_at"], "urban batteries last 1-3 h, the outage 3 h"
    outs = _telemetry(city, cells, T0 + SPAN)
    dev = sorted(inc.params["offline_at"])[0]
    mains = _series(outs, dev, "mains_power")
    battery = [v for t, v in _series(outs, dev, "battery_pct") if t < parse_time(inc.params["offline_at"][dev])]
    assert mains[0][1] == 0.0 and battery == sorted(battery, reverse=True) and battery[-1] < 20
    mine = [orjson.loads(m.payload) for m in outs if isinstance(m, Message) and m.device_id == dev]
    kinds = [(d.get("type") or d.get("state")) for d in mine if "metrics" not in d]
    assert kinds[:3] == ["online", "mains_power_lost", "battery_low"]
    offline = next(d for d in mine if d.get("state") == "offline")
    assert abs(parse_time(offline["ts"]) - parse_time(inc.params["offline_at"][dev])) <= 60
    assert offline["reason"] == "battery exhausted"
    assert mine[-1].get("state") == "online" or "metrics" in mine[-1]  # power restored later
    tele_after = [t for t, _ in mains if parse_time(offline["ts"]) <= t < T0 + 3 * 3600]
    assert tele_after == []  # an offline site sends nothing


def test_degradation_stuck_and_silent() -> None:
    base = build_city(Scenario(cameras=0))
    bts, trf = base.by_kind("bts")[0].id, base.by_kind("traffic")[0].id
    silent = base.by_kind("traffic")[1].id
    city = _city(IncidentSpec(kind="bts_degradation", device=bts, at=3600, duration_s=3600,
                              params={"drop_call_rate_pct": 8}),
                 IncidentSpec(kind="sensor_stuck", device=trf, at=3600, duration_s=3600),
                 IncidentSpec(kind="device_silent", device=silent, at=3600, duration_s=1800,
                              params={"disconnect": True}))
    outs = _telemetry(city, {bts, trf, silent}, T0 + SPAN)
    drops = _series(outs, bts, "drop_call_rate_pct")
    assert min(v for t, v in drops if T0 + 3600 <= t < T0 + 7200) > 3 * max(v for t, v in drops if t < T0 + 3600)
    stuck = [orjson.loads(m.payload)["metrics"] for m in outs if isinstance(m, Message) and m.device_id == trf
             and m.channel == "telemetry" and T0 + 3600 <= orjson.loads(m.payload)["ts"] / 1000 < T0 + 7200]
    assert len(stuck) > 10 and all(s == stuck[0] for s in stuck)
    rows = [orjson.loads(m.payload) for m in outs if isinstance(m, Message) and m.device_id == silent]
    tele = [r for r in rows if "metrics" in r]
    assert not [r for r in tele if T0 + 3600 <= r["ts"] / 1000 < T0 + 5400]
    gaps = [b["seq"] - a["seq"] for a, b in itertools.pairwise(tele)]
    assert max(gaps) > 50 and gaps.count(1) == len(gaps) - 1  # one visible gap
    states = [(r["state"], r["reason"]) for r in rows if "state" in r]
    assert states == [("online", "boot"), ("offline", "connection lost"), ("online", "reconnected")]
    with_wills = _telemetry(city, {silent}, T0 + SPAN, wills=True)
    assert [c.action for c in with_wills if isinstance(c, Control)] == ["kill", "revive"]
