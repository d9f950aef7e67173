"""City model: bundled geography, device placement, ids, neighbours, presets."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from ingest import contract
from simulators import geo
from simulators.city import DATA_DIR, build_city, load_geography
from simulators.scenario import Scenario, load_scenario

pytestmark = pytest.mark.unit

HAIPHONG = {"Hồng Bàng", "Ngô Quyền", "Lê Chân", "Hải An", "Kiến An", "Đồ Sơn", "Dương Kinh", "Thủy Nguyên",
            "An Dương", "An Lão", "Kiến Thụy", "Tiên Lãng", "Vĩnh Bảo", "Cát Hải"}


def test_bundled_city_is_geojson_with_districts_and_named_roads() -> None:
    doc = json.loads((DATA_DIR / "haiphong.json").read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection"
    _, districts, roads = load_geography("haiphong")
    assert {d.name for d in districts.values()} == HAIPHONG
    for d in districts.values():
        assert len(d.ring) >= 4
        assert all(20.55 <= lat <= 21.1 and 106.35 <= lon <= 107.0 for lon, lat in d.ring)
        assert geo.point_in_polygon(d.seat, d.ring), d.code
    assert abs(sum(d.weight for d in districts.values()) - 1) < 1e-9
    assert len(roads) >= 10 and all(r.name and len(r.points) >= 2 and r.length_km > 1 for r in roads.values())


def test_default_city_sizes_and_readable_ids() -> None:
    city = build_city()
    assert (len(city.by_kind("bts")), len(city.by_kind("camera")), len(city.by_kind("traffic"))) == (60, 20, 30)
    assert len(city.sites()) == 29
    patterns = {"bts": r"HP-[A-Z]{2}-BTS-\d{4}-\d", "camera": r"HP-[A-Z]{2}-CAM-\d{4}",
                "traffic": r"HP-[A-Z]{2}-TRF-\d{4}"}
    ids = [d.id for d in city.devices]
    assert len(set(ids)) == len(ids)
    for d in city.devices:
        assert re.fullmatch(patterns[d.kind], d.id), d.id
        assert contract.DEVICE_ID_RE.fullmatch(d.id)
        assert d.district in city.districts


def test_province_preset() -> None:
    city = build_city(Scenario(scale="province"))
    assert len(city.by_kind("bts")) == 3240 and len(city.sites()) == 1582
    assert len(city.by_kind("camera")) == 1000 and len(city.by_kind("traffic")) == 500
    assert len({d.id for d in city.devices}) == len(city.devices)


def test_placement_is_deterministic_and_inside_districts() -> None:
    a, b = build_city(Scenario(seed=5)), build_city(Scenario(seed=5))
    assert [d.to_dict() for d in a.devices] == [d.to_dict() for d in b.devices]
    assert [d.to_dict() for d in build_city(Scenario(seed=6)).devices] != [d.to_dict() for d in a.devices]
    for d in a.devices:
        if d.kind != "traffic":
            assert geo.point_in_polygon((d.lon, d.lat), a.districts[d.district].ring), d.id


def test_traffic_neighbours_follow_the_road() -> None:
    city = build_city()
    for d in city.by_kind("traffic"):
        assert d.road in city.roads and d.lanes > 0 and d.free_flow_kmh > 0
        if d.downstream:
            down = city.device(d.downstream)
            assert down.road == d.road and down.upstream == d.id and down.road_km > d.road_km
        assert set(d.neighbours) == {x for x in (d.upstream, d.downstream) if x}
    for road in city.roads:
        sensors = city.road_sensors(road)
        for up, down in itertools.pairwise(sensors):
            assert city.device(up).downstream == down


def test_bts_cells_share_a_site_and_cameras_know_nearby_sensors() -> None:
    city = build_city()
    for site, cells in city.sites().items():
        assert 1 <= len(cells) <= 3
        first = city.device(cells[0])
        for c in cells:
            dev = city.device(c)
            assert (dev.lat, dev.lon, dev.site) == (first.lat, first.lon, site)
            assert set(dev.neighbours) == set(cells) - {c}
    for cam in city.by_kind("camera"):
        for n in cam.neighbours:
            assert city.device(n).road == cam.road


def test_id_prefix_and_scenario_file(tmp_path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('seed = 3\nscale = "tiny"\nid_prefix = "t-abc"\ncameras = 4\n[intervals]\ntraffic_s = 5\n')
    sc = load_scenario(path)
    city = build_city(sc)
    assert sc.intervals.traffic_s == 5 and len(city.by_kind("camera")) == 4
    assert all(d.id.startswith("t-abc-") for d in city.devices)
    assert city.resolve_id(city.devices[0].id.removeprefix("t-abc-")) == city.devices[0].id
    geojson = city.to_geojson()
    layers = {f["properties"]["layer"] for f in geojson["features"]}
    assert layers == {"district", "road", "device"}
