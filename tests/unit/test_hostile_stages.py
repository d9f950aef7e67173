"""Hostile data and records never end a stage, and one device's data costs only that device (found by H4).

* Readings of ±1e308 made the numeric detectors raise on every later reading of their device (a NaN bin index
  in the relative-entropy windows); each flush holding one raised whole and was retried device by device, and
  every other device's readings were learned a second time. Such a device is now set apart.
* A silence whose time the engine cannot compare made the alert stage's step raise: its task ended for good,
  silently, while /readyz said ready. The step now never raises; a step that keeps raising is a health problem.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from analytics.numeric import kernel
from ingest.records import DeviceEvent, ParsedMessage
from ioc.alerts.config import AlertsConfig
from ioc.alerts.silences import Silence
from ioc.alerts.stage import AlertStage
from ioc.analytics_isolation import Isolation
from ioc.analytics_stage import AnalyticsStage
from ioc.api.models import ApiTime
from ioc.geo import City
from ioc.live.hub import LiveHub

pytestmark = pytest.mark.unit

Row = tuple[str, str, datetime, float]


async def test_a_device_that_raises_is_set_apart_and_the_others_are_analysed_once() -> None:
    stage = AnalyticsStage(LiveHub(), None, camera_processes=0)
    calls: list[list[str]] = []
    real = stage.monitor.ingest

    def picky(readings: list[Row]) -> Any:
        calls.append(sorted({r[0] for r in readings}))
        if any(r[0] == "poison" for r in readings):
            raise ValueError("a detector bug")
        return real(readings)

    stage.monitor.ingest = picky  # type: ignore[method-assign,assignment]
    now = datetime.now(UTC)
    devices = [(d, "traffic", "") for d in ("good-1", "poison", "good-2")]
    for k in range(3):
        t = now + timedelta(seconds=k)
        readings = [(d, "speed_kmh", t, 40.0 + k) for d in ("good-1", "poison", "good-2")]
        await stage._detect_safely(devices if k == 0 else [], readings)
    # first flush: whole (raises), then device by device; later flushes: the others together, the poison alone
    assert calls == [["good-1", "good-2", "poison"], ["good-1"], ["poison"], ["good-2"],
                     ["good-1", "good-2"], ["poison"], ["good-1", "good-2"], ["poison"]]
    assert "poison" in stage.isolation and stage.dropped_readings == 3


def test_isolation_releases_after_its_hold_and_stays_bounded() -> None:
    clock = [0.0]
    iso = Isolation(hold_s=10.0, max_devices=2, clock=lambda: clock[0])
    iso.raised("a")
    now = datetime.now(UTC)
    assert iso.split([("a", "m", now, 1.0), ("b", "m", now, 2.0)]) == ([("b", "m", now, 2.0)],
                                                                       {"a": [("a", "m", now, 1.0)]})
    iso.passed("a")
    assert "a" in iso  # still within its hold
    clock[0] = 11.0
    iso.passed("a")
    assert "a" not in iso
    for dev in ("x", "y", "z"):
        iso.raised(dev)
    assert len(iso) == 2 and "z" in iso


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
async def test_extreme_values_on_one_device_cost_no_other_device_its_analysis() -> None:
    stage = AnalyticsStage(LiveHub(), None, camera_processes=0)
    t0 = datetime.now(UTC)
    flushes = 6
    for k in range(flushes):
        t = t0 + timedelta(seconds=k)
        readings: list[Row] = [("huge", "flow_veh_h", t, 1e308 if k % 2 else -1e308),
                               ("tiny", "flow_veh_h", t, 5e-324 if k % 2 else -5e-324),
                               ("jump", "flow_veh_h", t, 0.0 if k < 3 else 1e300)]
        readings += [(f"good-{i}", "flow_veh_h", t, 100.0 + i + k) for i in range(5)]
        devices = [(r[0], "traffic", "") for r in readings] if k == 0 else []
        await stage._detect_safely(devices, readings)  # never raises
    keys, F = stage.monitor.table.keys, stage.monitor.bank.F
    for i in range(5):  # every good reading learned exactly once, whatever the hostile ones did
        assert F[keys[(f"good-{i}", "flow_veh_h")], kernel.N] == flushes
    assert stage.dropped_readings <= flushes  # at most the hostile device's own readings


def _stage() -> AlertStage:
    city = City.load()
    return AlertStage(LiveHub(city.district_of), None, city, AlertsConfig())


def test_an_alert_step_that_raises_never_ends_the_stage_and_health_says_so() -> None:
    stage = _stage()
    now = datetime.now(UTC)
    # a silence as asyncpg reads -infinity back: a naive datetime.min (compared with aware times: TypeError)
    stage.engine.silences = [Silence(1, {"device_id": "BTS-1"}, datetime.min, now + timedelta(hours=1), "r", "a")]
    stage.on_parsed(ParsedMessage([DeviceEvent("BTS-1", "bts", now, "door_open", "critical", {})], []))
    stage._step_safely(now)  # raises inside: caught
    assert stage.step_failing is not None and "TypeError" in stage.step_failing[1]
    assert stage.health_problems() == []  # not yet: one bad tick is not a stall
    stage.step_failing = (now - timedelta(seconds=30), stage.step_failing[1])
    assert any("step raises" in p for p in stage.health_problems())
    stage.engine.silences = []
    stage.on_parsed(ParsedMessage([DeviceEvent("BTS-2", "bts", now, "door_open", "critical", {})], []))
    stage._step_safely(now + timedelta(seconds=1))
    assert stage.step_failing is None and stage.health_problems() == []
    assert any(a.device_id == "BTS-2" for a in stage.engine.by_key.values())


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999Z",
                                  "9999-12-31T23:59:59-01:00", "1969-12-31T23:59:59Z", "9000-01-01T00:00:00Z"])
def test_api_times_near_the_edges_of_datetime_are_refused(text: str) -> None:
    from pydantic import TypeAdapter, ValidationError

    with pytest.raises(ValidationError):
        TypeAdapter(ApiTime).validate_python(text)


def test_api_times_are_aware_and_in_utc() -> None:
    from pydantic import TypeAdapter

    adapter = TypeAdapter(ApiTime)
    assert adapter.validate_python("2026-01-01T07:00:00+07:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert adapter.validate_python("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)  # no offset: UTC


def test_a_device_may_use_a_bounded_number_of_event_types() -> None:
    from ingest.guard import MetricNameGuard
    from ingest.records import Reason

    guard = MetricNameGuard(max_event_types=3)
    now = datetime.now(UTC)

    def event(dev: str, etype: str) -> ParsedMessage:
        return guard.apply(ParsedMessage([DeviceEvent(dev, "bts", now, etype, "major", {})], []), "t")

    assert all(event("BTS-1", f"t{i}").records for i in range(3))
    refused = event("BTS-1", "t3")  # a fourth type: each new type would be a new alert of its incident
    assert not refused.records and refused.rejections[0].reason is Reason.TOO_MANY_EVENT_TYPES
    assert event("BTS-1", "t1").records and event("BTS-2", "t3").records  # known types, other devices: kept


def test_new_alerts_beyond_the_reserved_ids_wait_for_the_next_tick() -> None:
    from ioc.cluster.ids import IdReserve

    stage = _stage()
    stage.ids = IdReserve()  # nothing reserved: the burst outran the reservation
    stage.engine.id_source = stage.ids
    now = datetime.now(UTC)
    stage.on_parsed(ParsedMessage([DeviceEvent("BTS-9", "bts", now, "door_open", "critical", {})], []))
    stage._step_safely(now)
    assert stage.step_failing is None and len(stage._signals) >= 1  # kept, not dropped
    stage.engine.id_source = None  # ids reserved by the next tick (the engine's own counter here)
    stage._step_safely(now + timedelta(seconds=1))
    assert any(a.device_id == "BTS-9" for a in stage.engine.by_key.values())
