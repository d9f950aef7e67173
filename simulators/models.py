"""Per-device signal models: turn (time, active incident effects) into metric values, with seeded noise.

Each model owns a ``random.Random`` seeded from (scenario seed, device id), so a device produces the same
values whichever process or shard simulates it.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence

from simulators import signals
from simulators.city import City, Device
from simulators.incidents import Effect
from simulators.signals import PowerState, device_rng, site_params, site_power

logger = logging.getLogger(__name__)

_PORT_ROADS = frozenset({"dinh-vu", "tan-vu-lach-huyen", "le-thanh-tong", "cao-toc-hn-hp"})
_ROAD_LOAD = {"urban": 0.97, "arterial": 0.95, "national": 0.85, "expressway": 0.72, "provincial": 0.55}


class _Smooth:
    """AR(1) noise in units of its stationary standard deviation, correlated over ``tau_s``."""

    __slots__ = ("rng", "t", "tau", "x")

    def __init__(self, rng: random.Random, tau_s: float) -> None:
        self.rng, self.tau, self.x = rng, tau_s, rng.gauss(0, 1)
        self.t: float | None = None

    def at(self, t: float) -> float:
        if self.t is not None:
            a = math.exp(-max(0.0, t - self.t) / self.tau)
            self.x = a * self.x + math.sqrt(1 - a * a) * self.rng.gauss(0, 1)
        self.t = t
        return self.x


def _active(effects: Sequence[Effect], t: float) -> list[Effect]:
    return [e for e in effects if e.start <= t < e.end]


def _ramp(e: Effect, t: float, ramp_s: float) -> float:
    """0 -> 1 over ``ramp_s`` after the onset and back to 0 over ``ramp_s`` before the end."""
    return max(0.0, min(1.0, (t - e.start) / ramp_s, (e.end - t) / ramp_s))


def congestion_severity(effects: Sequence[Effect], t: float) -> tuple[float, float]:
    """(jam severity 0..1, demand multiplier) of a road sensor from the congestion/accident effects at ``t``."""
    sev, mult = 0.0, 1.0
    for e in _active(effects, t):
        if e.kind not in ("congestion", "accident"):
            continue
        base = float(e.params.get("severity", 0.9 if e.kind == "accident" else 0.65))
        if e.role == "downstream":
            mult = min(mult, 0.45)  # starved of vehicles below the blockage
            continue
        ramp_s = 60.0 if e.kind == "accident" and e.role == "origin" else float(e.params.get("ramp_s", 300.0))
        sev = max(sev, base * 0.85 ** e.hop * _ramp(e, t, ramp_s))
    return sev, mult


class TrafficModel:
    """A road detector: flow, speed, occupancy, queue and heavy vehicles from demand and the jam severity."""

    def __init__(self, city: City, dev: Device, interval_s: float) -> None:
        self.rng = device_rng(city.scenario.seed, dev.id)
        road = city.roads[dev.road] if dev.road else None
        cls = road.road_class if road else "urban"
        urban = city.districts[dev.district].urban
        self.load = _ROAD_LOAD.get(cls, 0.8) * (1.0 if urban else 0.8) * self.rng.uniform(0.85, 1.03)
        self.vf = dev.free_flow_kmh or 50.0
        self.lanes = dev.lanes or 2
        self.port = dev.road in _PORT_ROADS
        self.interval = interval_s
        self.offset = city.utc_offset_hours
        self.slow = _Smooth(self.rng, 900.0)
        self.frozen: dict[str, float] | None = None

    def sample(self, t: float, effects: Sequence[Effect]) -> dict[str, float]:
        """Metrics of one reading at ``t``."""
        stuck = any(e.kind == "sensor_stuck" for e in _active(effects, t))
        if stuck and self.frozen is not None:
            return dict(self.frozen)
        hour, weekday, _ = signals.local_time(t, self.offset)
        demand = signals.traffic_demand(hour, weekday) * self.load * (1 + 0.05 * self.slow.at(t))
        sev, mult = congestion_severity(effects, t)
        k = signals.free_flow_state(demand * mult)
        if sev > 0:
            # Jammed branch of the fundamental diagram: density rises towards k_jam with the severity.
            k = max(k, 0.5 + 0.48 * sev)
        flow, speed, occ = signals.fundamental(k, self.vf, self.lanes)
        # Counting noise: the detector counts vehicles over its interval (Poisson, normal approximation).
        expected = flow * self.interval / 3600
        count = max(0.0, self.rng.gauss(expected, math.sqrt(expected + 0.25)))
        flow_m = round(count * 3600 / self.interval)
        speed_m = max(0.0, speed + self.rng.gauss(0, 1.5 + 0.03 * speed)) if count > 0 or sev > 0 else self.vf
        occ_m = min(100.0, max(0.0, occ + self.rng.gauss(0, 0.8 + 0.04 * occ)))
        queue = 0.0
        if sev > 0:
            queue = 80 + 900 * sev * self.rng.uniform(0.8, 1.2)
        elif k > 0.3:
            queue = (k - 0.3) * 400 * self.rng.uniform(0.5, 1.5)  # queues at signals in the busy hours
        heavy = signals.heavy_vehicle_share(hour, self.port) * self.rng.uniform(0.85, 1.15)
        values = {"flow_veh_h": float(flow_m), "speed_kmh": round(speed_m, 1), "occupancy_pct": round(occ_m, 1),
                  "queue_len_m": round(queue), "heavy_vehicle_pct": round(min(heavy, 80.0), 1)}
        if stuck:
            self.frozen = values
        else:
            self.frozen = None
        return values


class BtsModel:
    """A BTS cell: load from the time of day and the district, power from its site's battery."""

    def __init__(self, city: City, dev: Device) -> None:
        seed = city.scenario.seed
        self.rng = device_rng(seed, dev.id)
        district = city.districts[dev.district]
        self.urban = district.urban
        # Denser districts put more users on each cell (sites do not scale fully with population).
        density = district.weight * len(city.districts)
        self.users_peak = self.rng.uniform(160, 320) * (0.75 + 0.35 * min(density, 2.0)) * (1.2 if self.urban else 0.8)
        self.load_k = self.rng.uniform(0.75, 1.05) * (1.0 if self.urban else 0.8)
        self.cap_mbps = self.rng.choice((150.0, 225.0, 300.0))
        self.base_drop = self.rng.uniform(0.15, 0.6)
        self.shelter = self.rng.uniform(4.0, 9.0)
        self.autonomy_h, self.battery0 = site_params(seed, dev.site or dev.id, self.urban)
        self.offset = city.utc_offset_hours
        self.slow = _Smooth(self.rng, 1800.0)
        self.fast = _Smooth(self.rng, 120.0)

    def power(self, t: float, effects: Sequence[Effect]) -> PowerState:
        """The site's power state at ``t``."""
        outages = [e for e in effects if e.kind == "power_outage"]
        autonomy = next((float(e.params["autonomy_h"]) for e in outages if e.params.get("autonomy_h")), self.autonomy_h)
        return site_power(t, [(e.start, e.end) for e in outages], autonomy, self.battery0)

    def sample(self, t: float, effects: Sequence[Effect], power: PowerState) -> dict[str, float]:
        """Metrics of one reading at ``t``."""
        hour, weekday, doy = signals.local_time(t, self.offset)
        load = signals.mobile_load(hour, weekday) * self.load_k * (1 + 0.08 * self.slow.at(t) + 0.05 * self.fast.at(t))
        load = min(max(load, 0.02), 1.0)
        prb = min(99.0, max(1.0, 92 * load + self.rng.gauss(0, 2.0)))
        users = max(0, round(self.users_peak * load * self.rng.uniform(0.92, 1.08)))
        thr = self.cap_mbps * prb / 100 * (1 - 0.35 * (prb / 100) ** 2) * self.rng.uniform(0.9, 1.1)
        drop = self.base_drop + 0.9 * max(0.0, prb - 75) / 25 + abs(self.rng.gauss(0, 0.08))
        avail = 100.0 if self.rng.random() > 0.03 else round(self.rng.uniform(98.5, 99.9), 2)
        for e in _active(effects, t):
            if e.kind == "bts_degradation":
                drop += float(e.params.get("drop_call_rate_pct", 6.0)) * self.rng.uniform(0.8, 1.2)
                avail = min(avail, 100.0 - float(e.params.get("availability_loss_pct", 2.0)) * self.rng.random())
                thr *= 0.7
        temp = signals.ambient_temperature(hour, doy) + self.shelter + 4 * load + self.rng.gauss(0, 0.3)
        if not power.mains:
            # Air conditioning is shed on battery: the shelter warms up towards +12 °C.
            temp += 12 * (1 - math.exp(-power.on_battery_s / 2400))
        rssi = -108 + 14 * load + self.rng.gauss(0, 1.0)
        return {"availability_pct": round(avail, 2), "prb_util_pct": round(prb, 1), "active_users": float(users),
                "throughput_mbps": round(thr, 1), "drop_call_rate_pct": round(drop, 2),
                "mains_power": 1.0 if power.mains else 0.0, "battery_pct": round(power.battery_pct, 1),
                "temperature_c": round(temp, 1), "rssi_dbm": round(rssi, 1)}


class CameraModel:
    """Camera health telemetry: frame rate, bitrate (drops with a black or covered image), temperature, disk."""

    def __init__(self, city: City, dev: Device) -> None:
        self.rng = device_rng(city.scenario.seed, dev.id)
        self.fps = self.rng.choice((15.0, 20.0, 25.0, 25.0, 30.0))
        self.kbps = self.rng.choice((2048.0, 3072.0, 4096.0))
        self.storage = self.rng.uniform(25, 70)
        self.offset = city.utc_offset_hours
        self.slow = _Smooth(self.rng, 3600.0)

    def sample(self, t: float, effects: Sequence[Effect]) -> dict[str, float]:
        """Metrics of one reading at ``t``."""
        hour, _, doy = signals.local_time(t, self.offset)
        light = signals.daylight(hour)
        fault = fault_mode(effects, t)
        # Night images are noisy, which costs bits; uniform images (black, covered, frozen) cost almost none.
        kbps = self.kbps * (0.8 + 0.15 * (1 - light)) * self.rng.uniform(0.92, 1.08)
        kbps *= {"black": 0.04, "covered": 0.12, "frozen": 0.2, "blurred": 0.45}.get(fault or "", 1.0)
        fps = self.fps - abs(self.rng.gauss(0, 0.15))
        temp = signals.ambient_temperature(hour, doy) + 7 + 9 * light + self.rng.gauss(0, 0.4)
        storage = self.storage + 3 * self.slow.at(t)
        return {"fps": round(fps, 2), "bitrate_kbps": round(kbps), "temperature_c": round(temp, 1),
                "storage_free_pct": round(min(99.0, max(1.0, storage)), 1)}


def fault_mode(effects: Sequence[Effect], t: float) -> str | None:
    """The camera fault active at ``t`` (black, frozen, blurred, covered, repointed) or None."""
    for e in _active(effects, t):
        if e.kind == "camera_fault":
            return str(e.params.get("mode", "black"))
    return None


def camera_jam(effects: Sequence[Effect], t: float) -> float:
    """How jammed the camera's road looks (0..1), from the congestion its neighbour sensors see."""
    return congestion_severity(effects, t)[0]
