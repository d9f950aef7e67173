"""Pure signal shapes: daily profiles, the traffic fundamental diagram, weather and daylight. No state, no I/O."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: Occupancy (%) when the road is jammed solid: detectors never read 100 % because of gaps between vehicles.
JAM_OCCUPANCY_PCT = 95.0
#: Lane capacity (veh/h) used with the Greenshields model.
LANE_CAPACITY_VEH_H = 1900.0


def local_time(ts: float, utc_offset_hours: float) -> tuple[float, int, int]:
    """Local (hour as a float, weekday with Monday = 0, day of year) of an epoch-seconds time."""
    dt = datetime.fromtimestamp(ts, UTC) + timedelta(hours=utc_offset_hours)
    return dt.hour + dt.minute / 60 + dt.second / 3600, dt.weekday(), dt.timetuple().tm_yday


def _bump(h: float, centre: float, width: float) -> float:
    # Gaussian on the 24-hour circle so 23:30 and 00:30 are neighbours.
    d = min(abs(h - centre), 24 - abs(h - centre))
    return math.exp(-0.5 * (d / width) ** 2)


def _daytime(h: float, rise: float, fall: float, edge: float = 0.8) -> float:
    """Smooth 0..1 plateau between ``rise`` and ``fall`` hours."""
    return 1 / (1 + math.exp(-(h - rise) / (edge / 4))) * 1 / (1 + math.exp((h - fall) / (edge / 4)))


def traffic_demand(hour: float, weekday: int) -> float:
    """Demand as a share of road capacity (about 0.05 at night to 0.9 at the rush hours).

    Weekdays have sharp commuter peaks at ~07:30 and ~17:30; weekends a lower, later, flatter day.
    """
    if weekday < 5:
        v = (0.05 + 0.33 * _daytime(hour, 6.0, 21.5, 1.5) + 0.52 * _bump(hour, 7.4, 0.8)
             + 0.56 * _bump(hour, 17.5, 1.0) + 0.05 * _bump(hour, 12.0, 1.0))
    else:
        v = 0.05 + 0.30 * _daytime(hour, 7.5, 22.0, 2.0) + 0.22 * _bump(hour, 10.5, 1.8) + 0.26 * _bump(hour, 17.5, 2.0)
    return min(v, 0.97)


def mobile_load(hour: float, weekday: int) -> float:
    """Mobile network load as a share of the busy-hour load (0.1 at 04:00, 1.0 around 21:00 on weekdays)."""
    wake = 6.5 if weekday < 5 else 7.5
    v = (0.10 + 0.50 * _daytime(hour, wake, 23.5, 2.0) + 0.12 * _bump(hour, 12.0, 1.5)
         + 0.28 * _bump(hour, 21.0, 1.6))
    if weekday >= 5:
        v *= 1.0 + 0.06 * _bump(hour, 21.0, 2.5)  # weekend evenings are busier on the phone network
    return min(v, 1.0)


def daylight(hour: float) -> float:
    """0 at night, 1 in full day, with ~40 min of dusk/dawn (Hải Phòng: sunrise ~05:45, sunset ~17:45)."""
    return _daytime(hour, 5.8, 17.7, 1.2)


def ambient_temperature(hour: float, day_of_year: int) -> float:
    """Typical air temperature (°C): ~17 °C nights in January, ~34 °C afternoons in July."""
    seasonal = 23.5 + 5.5 * math.cos(2 * math.pi * (day_of_year - 196) / 365)
    return seasonal + 3.5 * math.cos(2 * math.pi * (hour - 14.5) / 24)


def free_flow_state(demand_ratio: float) -> float:
    """Greenshields, uncongested branch: density as a share of jam density for a flow/capacity ratio."""
    x = min(max(demand_ratio, 0.0), 0.999)
    return (1 - math.sqrt(1 - x)) / 2


def fundamental(density_ratio: float, free_flow_kmh: float, lanes: int) -> tuple[float, float, float]:
    """(flow veh/h, speed km/h, occupancy %) for a density ratio k/k_jam (Greenshields: v = vf (1 - k/kj))."""
    k = min(max(density_ratio, 0.0), 1.0)
    speed = free_flow_kmh * (1 - k)
    flow = 4 * k * (1 - k) * LANE_CAPACITY_VEH_H * lanes
    return flow, speed, JAM_OCCUPANCY_PCT * k


def heavy_vehicle_share(hour: float, port_road: bool) -> float:
    """Share of trucks (%): container traffic to the port runs at night and avoids the city rush hours."""
    base = 9.0 + 16.0 * (1 - _daytime(hour, 6.0, 22.0, 1.0)) - 4.0 * (_bump(hour, 7.4, 0.8) + _bump(hour, 17.5, 1.0))
    return base * (2.2 if port_road else 1.0)


#: A BTS site shuts down when its battery falls to this charge.
BATTERY_CUTOFF_PCT = 3.0
BATTERY_CHARGE_PCT_H = 20.0
#: Sites need a few minutes to boot after power comes back.
BOOT_S = 120.0


def device_rng(seed: int, key: str) -> random.Random:
    """A random stream private to one device (or site), stable across processes."""
    return random.Random(f"{seed}:{key}")


@dataclass(slots=True)
class PowerState:
    """A BTS site's power at one instant."""

    mains: bool
    battery_pct: float
    alive: bool
    on_battery_s: float  # seconds since mains was lost (0 on mains)


def site_power(t: float, outages: Sequence[tuple[float, float]], autonomy_h: float,
               battery0: float = 100.0) -> PowerState:
    """Battery bookkeeping over the outage intervals before ``t``: drain on battery, recharge on mains."""
    drain = 100.0 / autonomy_h / 3600.0
    charge = BATTERY_CHARGE_PCT_H / 3600.0
    battery, last, dead_until = battery0, None, -math.inf
    for start, end in sorted(outages):
        if start > t:
            break
        if last is not None:
            battery = min(100.0, battery + charge * max(0.0, start - last))
        stop = min(t, end)
        battery = max(BATTERY_CUTOFF_PCT, battery - drain * (stop - start))
        if t < end:
            alive = battery > BATTERY_CUTOFF_PCT
            return PowerState(False, battery, alive, t - start)
        if battery <= BATTERY_CUTOFF_PCT:
            dead_until = end + BOOT_S
        last = end
    if last is not None:
        battery = min(100.0, battery + charge * (t - last))
    return PowerState(True, battery, t >= dead_until, 0.0)


def site_params(seed: int, site: str, urban: bool) -> tuple[float, float]:
    """(battery autonomy in hours at typical load, starting charge %) of a site."""
    rng = device_rng(seed, f"site:{site}")
    autonomy = rng.uniform(1.0, 3.0) if urban else rng.uniform(1.5, 5.0)
    return autonomy, rng.uniform(96.0, 100.0)
