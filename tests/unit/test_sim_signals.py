"""Signal shapes: rush hours, weekends, the speed/occupancy relation, BTS load and batteries."""

from __future__ import annotations

import statistics

import pytest

from simulators import signals
from simulators.city import build_city
from simulators.clock import parse_time
from simulators.incidents import Effect
from simulators.models import BtsModel, TrafficModel
from simulators.scenario import Scenario

pytestmark = pytest.mark.unit

TUESDAY = parse_time("2025-11-18")  # local midnight, UTC+7
SATURDAY = parse_time("2025-11-22")


def _day(model: TrafficModel, day0: float, step: float = 300.0) -> dict[float, list[dict[str, float]]]:
    by_hour: dict[float, list[dict[str, float]]] = {}
    t = day0
    while t < day0 + 86400:
        by_hour.setdefault(int((t - day0) // 3600), []).append(model.sample(t, []))
        t += step
    return by_hour


def test_demand_has_weekday_rush_hours_and_a_lower_weekend() -> None:
    wd = [signals.traffic_demand(h / 4, 1) for h in range(96)]
    we = [signals.traffic_demand(h / 4, 5) for h in range(96)]
    assert signals.traffic_demand(7.5, 1) > 1.5 * signals.traffic_demand(12, 1)
    assert signals.traffic_demand(17.5, 1) > 1.5 * signals.traffic_demand(14, 1)
    assert signals.traffic_demand(3, 1) < 0.2 * signals.traffic_demand(7.5, 1)
    assert max(we) < max(wd) and sum(we) < sum(wd)


def test_sensor_speed_falls_at_rush_hour_and_with_occupancy() -> None:
    city = build_city()
    dev = next(d for d in city.by_kind("traffic") if d.road == "lach-tray")
    by_hour = _day(TrafficModel(city, dev, 30.0), TUESDAY)
    mean = {h: {k: statistics.fmean(r[k] for r in rows) for k in rows[0]} for h, rows in by_hour.items()}
    assert mean[7]["flow_veh_h"] > 3 * mean[3]["flow_veh_h"]
    assert mean[17]["flow_veh_h"] > 1.5 * mean[13]["flow_veh_h"]
    assert mean[7]["speed_kmh"] < mean[3]["speed_kmh"] - 5
    assert mean[17]["occupancy_pct"] > 2 * mean[3]["occupancy_pct"]
    weekend = _day(TrafficModel(city, dev, 30.0), SATURDAY)
    assert (statistics.fmean(r["flow_veh_h"] for rows in weekend.values() for r in rows)
            < statistics.fmean(r["flow_veh_h"] for rows in by_hour.values() for r in rows))
    # Fundamental diagram: across free flow and a jam, speed and occupancy move in opposite directions.
    model = TrafficModel(city, dev, 30.0)
    jam = [Effect("x", "accident", TUESDAY + 8 * 3600, TUESDAY + 9 * 3600, "origin", {"severity": 0.9})]
    rows = [model.sample(TUESDAY + 6 * 3600 + i * 60, jam) for i in range(240)]
    corr = statistics.correlation([r["speed_kmh"] for r in rows], [r["occupancy_pct"] for r in rows])
    assert corr < -0.9


def test_fundamental_diagram_is_monotone_in_speed() -> None:
    speeds = [signals.fundamental(k / 20, 50, 2)[1] for k in range(21)]
    occs = [signals.fundamental(k / 20, 50, 2)[2] for k in range(21)]
    assert speeds == sorted(speeds, reverse=True) and occs == sorted(occs)
    flows = [signals.fundamental(k / 20, 50, 2)[0] for k in range(21)]
    assert max(flows) == flows[10]  # capacity at half the jam density


def test_bts_load_follows_the_day_and_the_district() -> None:
    city = build_city()
    cell = city.by_kind("bts")[0]
    model = BtsModel(city, cell)
    power = signals.PowerState(True, 100.0, True, 0.0)
    night = [model.sample(TUESDAY + 4 * 3600 + i * 60, [], power) for i in range(30)]
    evening = [model.sample(TUESDAY + 21 * 3600 + i * 60, [], power) for i in range(30)]
    for key in ("prb_util_pct", "active_users", "throughput_mbps"):
        assert statistics.fmean(r[key] for r in evening) > 2.5 * statistics.fmean(r[key] for r in night)
    urban = [BtsModel(city, d).users_peak for d in city.by_kind("bts") if city.districts[d.district].urban]
    rural = [BtsModel(city, d).users_peak for d in city.by_kind("bts") if not city.districts[d.district].urban]
    assert statistics.fmean(urban) > statistics.fmean(rural)


def test_battery_drains_on_outage_then_recharges() -> None:
    t0 = TUESDAY
    outage = [(t0, t0 + 4 * 3600)]
    assert signals.site_power(t0 - 1, outage, 2.0).mains
    half = signals.site_power(t0 + 3600, outage, 2.0)
    assert not half.mains and half.alive and 49 < half.battery_pct < 51
    dead = signals.site_power(t0 + 2.5 * 3600, outage, 2.0)
    assert not dead.alive and dead.battery_pct == signals.BATTERY_CUTOFF_PCT
    booting = signals.site_power(t0 + 4 * 3600 + 60, outage, 2.0)
    assert booting.mains and not booting.alive
    back = signals.site_power(t0 + 5 * 3600, outage, 2.0)
    assert back.alive and 20 < back.battery_pct < 25


def test_models_are_deterministic_per_seed() -> None:
    a, b, c = build_city(Scenario(seed=1)), build_city(Scenario(seed=1)), build_city(Scenario(seed=2))
    dev = a.by_kind("traffic")[0]
    run = [TrafficModel(city, city.device(dev.id) if dev.id in {d.id for d in city.devices} else
                        city.by_kind("traffic")[0], 30.0) for city in (a, b, c)]
    series = [[m.sample(TUESDAY + i * 30, []) for i in range(50)] for m in run]
    assert series[0] == series[1] and series[0] != series[2]
