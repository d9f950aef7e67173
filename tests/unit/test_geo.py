"""Point -> district with holes (enclaves) and MultiPolygons (ioc/geo.py)."""

from __future__ import annotations

from typing import Any

import pytest

from ioc.geo import City

pytestmark = pytest.mark.unit


def _square(x0: float, y0: float, x1: float, y1: float, clockwise: bool = False) -> list[list[float]]:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return ring[::-1] if clockwise else ring


def _district(code: str, geometry: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "properties": {"layer": "district", "code": code, "name": code},
            "geometry": geometry}


# A (106.0..107.0 x 20.0..21.0) has a hole 106.4..106.6 x 20.4..20.6: district E, an enclave, lies in it.
# M is a MultiPolygon east of A: an island with a lake (a hole no district owns) and a second island.
CITY = City.from_geojson({"type": "FeatureCollection", "properties": {"name": "test"}, "features": [
    _district("A", {"type": "Polygon", "coordinates": [_square(106.0, 20.0, 107.0, 21.0),
                                                       _square(106.4, 20.4, 106.6, 20.6, clockwise=True)]}),
    _district("E", {"type": "Polygon", "coordinates": [_square(106.4, 20.4, 106.6, 20.6)]}),
    _district("M", {"type": "MultiPolygon", "coordinates": [
        [_square(107.2, 20.0, 107.6, 20.4), _square(107.3, 20.1, 107.5, 20.3, clockwise=True)],
        [_square(107.8, 20.8, 108.0, 21.0)],
    ]}),
]})


def test_a_device_in_an_enclave_belongs_to_the_enclave_not_the_district_around_it() -> None:
    assert CITY.district_of(20.5, 106.5) == "E"
    assert CITY.district_of(20.45, 106.55) == "E"
    assert CITY.district_of(20.3, 106.5) == "A"  # just outside the hole
    assert CITY.district_of(20.5, 106.7) == "A"


def test_holes_are_honoured_whatever_the_district_order() -> None:
    reordered = City(CITY.name, list(reversed(CITY.districts)), CITY.geojson)
    assert reordered.district_of(20.5, 106.5) == "E"
    a = CITY.get("A")
    assert a is not None and not a.contains(106.5, 20.5) and a.contains(106.2, 20.2)


def test_multipolygon_parts_and_their_holes() -> None:
    assert CITY.district_of(20.05, 107.25) == "M"  # first island, on land
    assert CITY.district_of(20.2, 107.4) is None  # its lake: no district
    assert CITY.district_of(20.9, 107.9) == "M"  # second island
    assert CITY.district_of(20.6, 107.7) is None  # sea between the islands (inside the bounding box)


def test_the_shipped_city_loads_with_one_hole_list_per_part() -> None:
    city = City.load()
    assert city.districts
    for d in city.districts:
        assert len(d.holes) == len(d.polygons)
