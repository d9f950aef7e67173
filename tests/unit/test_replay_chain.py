"""The whole chain in simulated time: simulator messages -> parse -> analytics -> alert engine (no I/O)."""

from __future__ import annotations

import orjson
import pytest

from ioc.geo import City as GeoCity
from ioc.replay import Replay
from simulators.city import build_city
from simulators.clock import parse_time
from simulators.fleet import Fleet, FleetOptions, Message
from simulators.incidents import plan_incidents
from simulators.scenario import IncidentSpec, Intervals, Scenario

pytestmark = pytest.mark.unit


def run(scenario: Scenario, minutes: float) -> tuple[Replay, list, float]:
    city = build_city(scenario)
    t0 = parse_time("2026-11-24T09:00:00+07:00")
    truth = plan_incidents(city, t0, t0 + minutes * 60)
    fleet = Fleet(city, city.devices, truth, FleetOptions(offline_on_exit=False))
    replay = Replay(GeoCity.load())
    pages = []
    for m in fleet.start(t0):
        if isinstance(m, Message):
            replay.feed(m.topic, m.payload, t0, m.retain)
    now = t0
    while now < t0 + minutes * 60:
        now += 1.0
        for m in fleet.advance(now):
            if isinstance(m, Message):
                replay.feed(m.topic, m.payload, now, m.retain)
        pages += replay.advance(now).pages
    return replay, pages, t0


def test_a_district_power_outage_and_a_black_camera_are_two_incidents_paged_once_each() -> None:
    scenario = Scenario(scale="tiny", seed=3, snapshot_width=160, snapshot_height=96,
                        intervals=Intervals(traffic_s=30, bts_s=60, camera_s=60, snapshot_s=10),
                        incidents=[IncidentSpec(kind="power_outage", at=120, duration_s=3600, district=None),
                                   IncidentSpec(kind="camera_fault", at=180, duration_s=3600,
                                                params={"mode": "black"})])
    replay, pages, t0 = run(scenario, 8)
    incidents = sorted(replay.engine.incidents.values(), key=lambda i: i.id)
    assert [i.category for i in incidents] == ["power", "camera"], [i.title for i in incidents]
    power, camera = incidents
    assert power.title.startswith("Mains power lost at ")
    powered = {replay.engine.alerts[m].device_id for m in power.members}
    assert len(powered) >= 1 and all(d.split("-")[2] == "BTS" for d in powered)
    first = min(replay.engine.alerts[m].started_at.timestamp() for m in power.members)
    assert first - (t0 + 120) <= 1.0  # the site controller's alarm is immediate
    assert camera.title.startswith("Camera ")  # the label may change as the analyser confirms (title follows)
    firing = [p for p in pages if p.reason == "firing"]
    assert sorted(p.incident_id for p in firing) == [power.id, camera.id]


def _telemetry(device: str, t: float) -> tuple[str, bytes]:
    return f"ioc/v1/traffic/{device}/telemetry", orjson.dumps({"ts": int(t * 1000), "metrics": {"speed_kmh": 40.0}})


def test_one_device_falling_quiet_is_silent_but_the_whole_city_at_once_is_our_input_stalling() -> None:
    replay = Replay(GeoCity.load())
    t0 = parse_time("2026-11-24T09:00:00+07:00")
    devices = [f"TRF-{i:02d}" for i in range(12)]
    t = t0
    for _ in range(10):  # everyone reports every 30 s...
        t += 30
        for d in devices:
            replay.feed(*_telemetry(d, t), at=t)
        replay.advance(t)
    for _ in range(10):  # ...then TRF-00 stops
        t += 30
        for d in devices[1:]:
            replay.feed(*_telemetry(d, t), at=t)
        replay.advance(t)
    silent = [a for a in replay.engine.alerts.values() if a.rule == "device_silent"]
    assert [a.device_id for a in silent] == ["TRF-00"]
    replay.advance(t + 600)  # nothing from anyone for 10 minutes: the input stalled, not 11 sensors
    assert [a.device_id for a in replay.engine.alerts.values() if a.rule == "device_silent"] == ["TRF-00"]
