"""Small planar geometry on WGS 84 coordinates (good enough at city scale): polygons, polylines, distances."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

#: A point as (lon, lat), GeoJSON order.
LonLat = tuple[float, float]

_EARTH_R_KM = 6371.0


def distance_km(a: LonLat, b: LonLat) -> float:
    """Equirectangular distance in kilometres (error < 0.1 % over a province)."""
    k = math.cos(math.radians((a[1] + b[1]) / 2))
    dx = math.radians(b[0] - a[0]) * k
    dy = math.radians(b[1] - a[1])
    return _EARTH_R_KM * math.hypot(dx, dy)


def point_in_polygon(p: LonLat, ring: Sequence[LonLat]) -> bool:
    """Ray casting test; ``ring`` may or may not repeat its first point."""
    x, y = p
    inside = False
    n = len(ring)
    for i in range(n):
        x1, y1 = ring[i]
        x2, y2 = ring[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def centroid(ring: Sequence[LonLat]) -> LonLat:
    """Area centroid of a simple polygon."""
    a = cx = cy = 0.0
    n = len(ring)
    for i in range(n):
        x1, y1 = ring[i]
        x2, y2 = ring[(i + 1) % n]
        cross = x1 * y2 - x2 * y1
        a += cross
        cx += (x1 + x2) * cross
        cy += (y1 + y2) * cross
    if abs(a) < 1e-12:
        return (sum(p[0] for p in ring) / n, sum(p[1] for p in ring) / n)
    return (cx / (3 * a), cy / (3 * a))


def random_point_in(ring: Sequence[LonLat], rng: random.Random, near: LonLat | None = None,
                    spread: float = 0.0) -> LonLat:
    """A uniform random point inside ``ring``; with ``near``, drawn around it (Gaussian, degrees) instead.

    Urban sites cluster around the district seat, which is what ``near`` is for.
    """
    xs = [p[0] for p in ring]
    ys = [p[1] for p in ring]
    for _ in range(200):
        if near is not None and spread > 0:
            p = (rng.gauss(near[0], spread), rng.gauss(near[1], spread))
        else:
            p = (rng.uniform(min(xs), max(xs)), rng.uniform(min(ys), max(ys)))
        if point_in_polygon(p, ring):
            return p
    return centroid(ring)


def polyline_length_km(points: Sequence[LonLat]) -> float:
    """Length of a polyline in kilometres."""
    return sum(distance_km(points[i], points[i + 1]) for i in range(len(points) - 1))


def point_along(points: Sequence[LonLat], fraction: float) -> tuple[LonLat, float]:
    """The point at ``fraction`` (0..1) of a polyline's length, and the heading there in degrees from north."""
    total = polyline_length_km(points)
    target = max(0.0, min(1.0, fraction)) * total
    run = 0.0
    for i in range(len(points) - 1):
        a, b = points[i], points[i + 1]
        seg = distance_km(a, b)
        if run + seg >= target or i == len(points) - 2:
            t = 0.0 if seg == 0 else min(1.0, (target - run) / seg)
            p = (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))
            return p, bearing(a, b)
        run += seg
    return points[-1], 0.0


def bearing(a: LonLat, b: LonLat) -> float:
    """Initial heading from ``a`` to ``b`` in degrees clockwise from north (planar approximation)."""
    k = math.cos(math.radians((a[1] + b[1]) / 2))
    return math.degrees(math.atan2((b[0] - a[0]) * k, b[1] - a[1])) % 360.0
