"""The city model: districts, roads and the devices placed in them. Pure and deterministic for a scenario.

``build_city(scenario)`` is what the live feed and wall display use to map ``device -> district, lat, lon,
road, neighbours``; the outlines and roads come from ``simulators/data/<city>.json`` (GeoJSON).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from simulators import geo
from simulators.scenario import Scenario

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
KIND_TAGS = {"bts": "BTS", "camera": "CAM", "traffic": "TRF"}
# Per-kilometre weight of a road class when spreading traffic sensors: dense in town, sparse on rural roads.
_ROAD_SENSOR_WEIGHT = {"expressway": 0.8, "national": 1.0, "arterial": 1.4, "urban": 1.8, "provincial": 0.5}


@dataclass(frozen=True, slots=True)
class District:
    """An administrative district with an approximate outline."""

    code: str
    name: str
    population: int
    urban: bool
    ring: tuple[geo.LonLat, ...]
    seat: geo.LonLat
    weight: float = 0.0  # share of the city's population


@dataclass(frozen=True, slots=True)
class Road:
    """A named road as a polyline; traffic flows from the first point to the last."""

    id: str
    name: str
    road_class: str
    lanes: int
    free_flow_kmh: float
    points: tuple[geo.LonLat, ...]
    length_km: float


@dataclass(frozen=True, slots=True)
class Device:
    """A simulated device and where it stands.

    ``neighbours`` are the previous/next sensors on the same road (traffic), the other cells of the
    site (bts) or the nearest traffic sensors on the camera's road (camera). ``upstream``/``downstream``
    are the neighbouring traffic sensors against / along the direction of travel.
    """

    id: str
    kind: str
    district: str
    lat: float
    lon: float
    road: str | None = None
    neighbours: tuple[str, ...] = ()
    site: str | None = None
    upstream: str | None = None
    downstream: str | None = None
    heading_deg: float = 0.0
    lanes: int = 0
    free_flow_kmh: float = 0.0
    road_km: float | None = None  # distance from the road's start (traffic sensors, road cameras)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly form."""
        return {k: getattr(self, k) for k in self.__slots__}


@dataclass(slots=True)
class City:
    """Districts, roads and devices of one simulated city."""

    code: str
    name: str
    utc_offset_hours: float
    id_prefix: str
    districts: dict[str, District]
    roads: dict[str, Road]
    devices: list[Device]
    scenario: Scenario
    _by_id: dict[str, Device] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {d.id: d for d in self.devices}

    def device(self, device_id: str) -> Device:
        """The device with this id (``KeyError`` if unknown)."""
        return self._by_id[device_id]

    def resolve_id(self, name: str) -> str:
        """Accept a full id or one without the prefix (``LC-TRF-0003``)."""
        if name in self._by_id:
            return name
        full = f"{self.id_prefix}-{name}"
        if full in self._by_id:
            return full
        raise KeyError(f"no device {name!r} in this city")

    def by_kind(self, kind: str) -> list[Device]:
        """Devices of one kind, in id order."""
        return [d for d in self.devices if d.kind == kind]

    def sites(self) -> dict[str, list[str]]:
        """BTS site id -> cell device ids."""
        out: dict[str, list[str]] = {}
        for d in self.devices:
            if d.site:
                out.setdefault(d.site, []).append(d.id)
        return out

    def road_sensors(self, road_id: str) -> list[str]:
        """Traffic sensor ids along a road in the direction of travel."""
        sensors = [d for d in self.devices if d.kind == "traffic" and d.road == road_id]
        return [d.id for d in sorted(sensors, key=lambda d: d.road_km or 0.0)]

    def to_geojson(self, with_devices: bool = True) -> dict[str, Any]:
        """Districts, roads and (optionally) devices as one GeoJSON FeatureCollection for maps."""
        feats: list[dict[str, Any]] = []
        for d in self.districts.values():
            feats.append({"type": "Feature", "id": d.code,
                          "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in d.ring]]},
                          "properties": {"layer": "district", "code": d.code, "name": d.name,
                                         "population": d.population, "urban": d.urban, "weight": d.weight}})
        for r in self.roads.values():
            feats.append({"type": "Feature", "id": r.id,
                          "geometry": {"type": "LineString", "coordinates": [list(p) for p in r.points]},
                          "properties": {"layer": "road", "id": r.id, "name": r.name, "class": r.road_class,
                                         "lanes": r.lanes, "free_flow_kmh": r.free_flow_kmh}})
        if with_devices:
            for dev in self.devices:
                props = dev.to_dict()
                props["layer"] = "device"
                props["neighbours"] = list(dev.neighbours)
                feats.append({"type": "Feature", "id": dev.id,
                              "geometry": {"type": "Point", "coordinates": [dev.lon, dev.lat]}, "properties": props})
        return {"type": "FeatureCollection",
                "properties": {"code": self.code, "name": self.name, "utc_offset_hours": self.utc_offset_hours},
                "features": feats}


@cache
def _read_city_file(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def city_data_path(name: str) -> Path:
    """Path of a bundled city (``haiphong``) or of a GeoJSON file given by path."""
    p = Path(name)
    if p.suffix == ".json" and p.exists():
        return p
    return DATA_DIR / f"{name}.json"


def load_geography(name: str = "haiphong") -> tuple[dict[str, Any], dict[str, District], dict[str, Road]]:
    """Read a city file: its properties, districts and roads."""
    doc = _read_city_file(str(city_data_path(name)))
    districts: dict[str, District] = {}
    roads: dict[str, Road] = {}
    for f in doc["features"]:
        props = f["properties"]
        if props.get("layer") == "district":
            ring = tuple((float(x), float(y)) for x, y in f["geometry"]["coordinates"][0][:-1])
            seat = tuple(props.get("seat") or geo.centroid(ring))
            districts[props["code"]] = District(props["code"], props["name"], int(props["population"]),
                                                bool(props.get("urban", False)), ring, (seat[0], seat[1]))
        elif props.get("layer") == "road":
            pts = tuple((float(x), float(y)) for x, y in f["geometry"]["coordinates"])
            roads[props["id"]] = Road(props["id"], props["name"], props.get("class", "urban"),
                                      int(props.get("lanes", 2)), float(props.get("free_flow_kmh", 50)), pts,
                                      geo.polyline_length_km(pts))
    total = sum(d.population for d in districts.values()) or 1
    districts = {c: District(d.code, d.name, d.population, d.urban, d.ring, d.seat, d.population / total)
                 for c, d in districts.items()}
    return doc.get("properties", {}), districts, roads


def district_of(p: geo.LonLat, districts: dict[str, District]) -> str:
    """Code of the district containing ``p``; the nearest seat when it falls outside every outline."""
    for d in districts.values():
        if geo.point_in_polygon(p, d.ring):
            return d.code
    return min(districts.values(), key=lambda d: geo.distance_km(p, d.seat)).code


def _apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` by weights with the largest-remainder method (deterministic)."""
    wsum = sum(weights.values()) or 1.0
    raw = {k: total * w / wsum for k, w in weights.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: (out[k] - raw[k], k))[: total - sum(out.values())]:
        out[k] += 1
    return out


def build_city(scenario: Scenario | None = None) -> City:
    """Build the city and place the scenario's devices (same scenario and seed -> same ids and positions)."""
    scenario = scenario or Scenario()
    props, districts, roads = load_geography(scenario.city)
    prefix = scenario.id_prefix or props.get("code", "SIM")
    rng = random.Random(f"city:{scenario.seed}")
    n_bts, n_sites, n_cams, n_trf = scenario.sizes
    traffic = _place_traffic(prefix, n_trf, districts, roads)
    devices = _place_bts(prefix, n_bts, n_sites, districts, rng) + _place_cameras(
        prefix, n_cams, districts, roads, traffic, rng) + traffic
    devices.sort(key=lambda d: (d.kind, d.id))
    logger.debug("city %s: %d devices", props.get("name"), len(devices))
    return City(props.get("code", prefix), props.get("name", scenario.city), float(props.get("utc_offset_hours", 7)),
                prefix, districts, roads, devices, scenario)


def _place_bts(prefix: str, n_cells: int, n_sites: int, districts: dict[str, District],
               rng: random.Random) -> list[Device]:
    if not n_cells:
        return []
    # Operators build denser in town: urban districts get more sites per inhabitant.
    per_district = _apportion(n_sites, {c: d.population * (1.8 if d.urban else 1.0) for c, d in districts.items()})
    extra_cells = n_cells - n_sites
    site_list: list[tuple[str, int, geo.LonLat]] = []
    for code, count in per_district.items():
        d = districts[code]
        for n in range(1, count + 1):
            near = d.seat if d.urban or rng.random() < 0.4 else None
            site_list.append((code, n, geo.random_point_in(d.ring, rng, near, 0.012 if d.urban else 0.03)))
    cells = [1] * len(site_list)
    base, rem = divmod(extra_cells, len(site_list))
    bonus = set(rng.sample(range(len(site_list)), rem))
    devices: list[Device] = []
    for i, (code, n, p) in enumerate(site_list):
        k = cells[i] + base + (1 if i in bonus else 0)
        site = f"{prefix}-{code}-S{n:04d}"
        ids = [f"{prefix}-{code}-BTS-{n:04d}-{c}" for c in range(1, k + 1)]
        for c, dev_id in enumerate(ids):
            devices.append(Device(dev_id, "bts", code, round(p[1], 6), round(p[0], 6), None,
                                  tuple(x for x in ids if x != dev_id), site, heading_deg=(c * 120.0) % 360))
    return devices


def _place_traffic(prefix: str, n: int, districts: dict[str, District], roads: dict[str, Road]) -> list[Device]:
    if not n:
        return []
    weights = {r.id: r.length_km * _ROAD_SENSOR_WEIGHT.get(r.road_class, 1.0) for r in roads.values()}
    if n < len(roads):
        keep = sorted(weights, key=lambda k: (-weights[k], k))[:n]
        weights = {k: weights[k] for k in keep}
    per_road = _apportion(n, weights)
    placed: list[tuple[str, int, geo.LonLat, float, str]] = []  # road, index, point, heading, district
    for rid, count in per_road.items():
        road = roads[rid]
        for i in range(count):
            p, heading = geo.point_along(road.points, (i + 0.5) / count)
            placed.append((rid, i, p, heading, district_of(p, districts)))
    numbers: dict[str, int] = {}
    ids: dict[tuple[str, int], str] = {}
    for rid, i, _, _, code in sorted(placed, key=lambda x: (x[4], x[0], x[1])):
        numbers[code] = numbers.get(code, 0) + 1
        ids[(rid, i)] = f"{prefix}-{code}-TRF-{numbers[code]:04d}"
    devices = []
    for rid, i, p, heading, code in placed:
        road = roads[rid]
        up = ids.get((rid, i - 1))
        down = ids.get((rid, i + 1))
        devices.append(Device(ids[(rid, i)], "traffic", code, round(p[1], 6), round(p[0], 6), rid,
                              tuple(x for x in (up, down) if x), None, up, down, round(heading, 1),
                              road.lanes, road.free_flow_kmh, round(road.length_km * (i + 0.5) / per_road[rid], 3)))
    return devices


def _place_cameras(prefix: str, n: int, districts: dict[str, District], roads: dict[str, Road],
                   traffic: list[Device], rng: random.Random) -> list[Device]:
    if not n:
        return []
    per_district = _apportion(n, {c: d.population * (2.0 if d.urban else 1.0) for c, d in districts.items()})
    # Which roads cross each district (sampled points), so most cameras can watch a road.
    crossing: dict[str, list[str]] = {}
    for road in roads.values():
        for k in range(41):
            sample, _ = geo.point_along(road.points, k / 40)
            code = district_of(sample, districts)
            if road.id not in crossing.setdefault(code, []):
                crossing[code].append(road.id)
    devices = []
    for code in sorted(per_district):
        d = districts[code]
        for num in range(1, per_district[code] + 1):
            dev_id = f"{prefix}-{code}-CAM-{num:04d}"
            road_id: str | None = None
            heading = rng.uniform(0, 360)
            p: geo.LonLat | None = None
            road_km: float | None = None
            if crossing.get(code) and rng.random() < 0.85:
                road_id = rng.choice(crossing[code])
                for _ in range(50):
                    frac = rng.random()
                    q, h = geo.point_along(roads[road_id].points, frac)
                    if geo.point_in_polygon(q, d.ring):
                        p, heading, road_km = q, h, round(frac * roads[road_id].length_km, 3)
                        break
            if p is None:
                road_id = None
                p = geo.random_point_in(d.ring, rng, d.seat, 0.01)
            near = sorted((t for t in traffic if t.road == road_id and road_id),
                          key=lambda t: geo.distance_km(p, (t.lon, t.lat)))[:2]
            devices.append(Device(dev_id, "camera", code, round(p[1], 6), round(p[0], 6), road_id,
                                  tuple(t.id for t in near), heading_deg=round(heading, 1),
                                  lanes=roads[road_id].lanes if road_id else 0,
                                  free_flow_kmh=roads[road_id].free_flow_kmh if road_id else 0.0, road_km=road_km))
    return devices
