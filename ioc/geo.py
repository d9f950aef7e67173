"""City geography: district outlines (and roads) from a GeoJSON file shipped with the project.

The service assigns each device to a district by the position it reports, so districts stay a
property of the city, not of the device simulator or of device ids.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CITY_FILE = Path(__file__).resolve().parent.parent / "simulators" / "data" / "haiphong.json"

Ring = list[tuple[float, float]]


@dataclass(frozen=True)
class District:
    """One district: code, name and outline.

    ``polygons`` holds the exterior ring (lon, lat) of each part of a (Multi)Polygon and ``holes`` the
    interior rings of the same part, index for index: a point in a hole (an enclave of another district,
    a lake) is not in the district.
    """

    code: str
    name: str
    polygons: tuple[Ring, ...]
    bbox: tuple[float, float, float, float]  # min lon, min lat, max lon, max lat
    properties: dict[str, Any] = field(default_factory=dict)
    holes: tuple[tuple[Ring, ...], ...] = ()

    def contains(self, lon: float, lat: float) -> bool:
        x0, y0, x1, y1 = self.bbox
        if not (x0 <= lon <= x1 and y0 <= lat <= y1):
            return False
        for index, ring in enumerate(self.polygons):
            if _in_ring(lon, lat, ring):
                holes = self.holes[index] if index < len(self.holes) else ()
                if not any(_in_ring(lon, lat, hole) for hole in holes):
                    return True
        return False


@dataclass(frozen=True)
class Road:
    """One road: id, name and centre line (lon, lat points)."""

    id: str
    name: str
    line: tuple[tuple[float, float], ...]


class City:
    """Districts (and roads) of a city with point -> district and point -> road lookups."""

    def __init__(self, name: str, districts: list[District], geojson: dict[str, Any],
                 roads: list[Road] | None = None) -> None:
        self.name = name
        self.districts = districts
        self.geojson = geojson
        self.roads = roads or []
        self._by_code = {d.code: d for d in districts}

    @classmethod
    def load(cls, path: Path | str = DEFAULT_CITY_FILE) -> City:
        """Read a GeoJSON FeatureCollection whose district features have ``properties.layer == "district"``."""
        return cls.from_geojson(json.loads(Path(path).read_text(encoding="utf-8")), Path(path).stem)

    @classmethod
    def from_geojson(cls, doc: dict[str, Any], default_name: str = "city") -> City:
        """Build from a parsed GeoJSON FeatureCollection (see :meth:`load`)."""
        districts: list[District] = []
        roads: list[Road] = []
        for feature in doc.get("features", []):
            props = feature.get("properties", {})
            geom = feature.get("geometry") or {}
            if props.get("layer") == "road" and geom.get("type") == "LineString":
                rid = str(props.get("id") or feature.get("id") or len(roads))
                roads.append(Road(rid, str(props.get("name", rid)),
                                  tuple((float(p[0]), float(p[1])) for p in geom["coordinates"])))
                continue
            if props.get("layer", "district") != "district" or geom.get("type") not in ("Polygon", "MultiPolygon"):
                continue
            polys = [geom["coordinates"]] if geom["type"] == "Polygon" else geom["coordinates"]
            polys = [poly for poly in polys if poly]  # a part needs its exterior ring
            rings = tuple(_ring(poly[0]) for poly in polys)
            holes = tuple(tuple(_ring(hole) for hole in poly[1:]) for poly in polys)
            xs = [p[0] for r in rings for p in r]
            ys = [p[1] for r in rings for p in r]
            code = str(props.get("code") or feature.get("id"))
            districts.append(District(code, str(props.get("name", code)), rings,
                                      (min(xs), min(ys), max(xs), max(ys)), props, holes))
        name = str(doc.get("properties", {}).get("name", default_name))
        return cls(name, districts, doc, roads)

    def get(self, code: str) -> District | None:
        return self._by_code.get(code)

    def district_of(self, lat: float | None, lon: float | None) -> str | None:
        """Code of the district containing the point, or None (no position, or outside every district)."""
        if lat is None or lon is None:
            return None
        for district in self.districts:
            if district.contains(lon, lat):
                return district.code
        return None


    def road_of(self, lat: float | None, lon: float | None, max_km: float = 0.5) -> str | None:
        """Id of the road whose centre line passes within ``max_km`` of the point (the nearest), or None."""
        if lat is None or lon is None:
            return None
        best, best_km = None, max_km
        for road in self.roads:
            km = _line_km(lon, lat, road.line)
            if km <= best_km:
                best, best_km = road.id, km
        return best


def _line_km(lon: float, lat: float, line: tuple[tuple[float, float], ...]) -> float:
    """Distance from a point to a polyline, km (equirectangular: fine at city scale)."""
    kx, ky = 111.32 * math.cos(math.radians(lat)), 110.57
    px, py = lon * kx, lat * ky
    best = math.inf
    for (x0, y0), (x1, y1) in itertools.pairwise(line):
        ax, ay, bx, by = x0 * kx, y0 * ky, x1 * kx, y1 * ky
        dx, dy = bx - ax, by - ay
        t = 0.0 if dx == dy == 0 else max(0.0, min(1.0, ((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy)))
        best = min(best, math.hypot(px - ax - t * dx, py - ay - t * dy))
    return best


def _ring(points: list[list[float]]) -> Ring:
    return [(float(p[0]), float(p[1])) for p in points]


def _in_ring(x: float, y: float, ring: Ring) -> bool:
    inside = False
    j = len(ring) - 1
    for i in range(len(ring)):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside
