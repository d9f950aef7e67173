"""The live hub with plain records: filters, coalescing of a lagging client, resume, redelivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ingest.records import DeviceEvent, Reading, StatusUpdate
from ioc.live.filters import FilterError, Subscription
from ioc.live.hub import LiveHub

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)


def district_of(lat: float | None, lon: float | None) -> str | None:
    return None if lat is None else ("NORTH" if lat > 20.9 else "SOUTH")


def reading(dev: str, i: int, kind: str = "traffic", lat: float | None = None) -> Reading:
    return Reading(dev, kind, T0 + timedelta(seconds=i), {"speed_kmh": float(i)}, i, lat, 106.7 if lat else None)


def frames(hub: LiveHub, client) -> list[dict]:  # type: ignore[no-untyped-def]
    return [orjson.loads(t) for t in client.take(hub)]


def test_snapshot_then_filtered_deltas() -> None:
    hub = LiveHub(district_of)
    hub.on_record(reading("N1", 0, lat=20.95), T0)
    hub.on_record(reading("S1", 0, lat=20.80), T0)
    client = hub.attach(Subscription.parse({"districts": "NORTH"}))
    (snap,) = frames(hub, client)
    assert snap["type"] == "snapshot" and [d["device_id"] for d in snap["devices"]] == ["N1"]
    hub.on_record(reading("N1", 1), T0)
    hub.on_record(reading("S1", 1), T0)
    got = frames(hub, client)
    assert [(f["type"], f["device_id"], f["district"]) for f in got] == [("reading", "N1", "NORTH")]


def test_bbox_kind_and_type_filters() -> None:
    sub = Subscription.parse({"bbox": [106.0, 20.9, 107.0, 21.0], "kinds": ["bts"], "types": ["status"]})
    assert sub.matches("bts", "B", None, 20.95, 106.5, "status")
    assert not sub.matches("bts", "B", None, 20.95, 106.5, "reading")
    assert not sub.matches("traffic", "B", None, 20.95, 106.5, "status")
    assert not sub.matches("bts", "B", None, 20.5, 106.5, "status")
    with pytest.raises(FilterError):
        Subscription.parse({"types": ["gossip"]})
    with pytest.raises(FilterError):
        Subscription.parse({"bbox": "1,2,3"})


def test_lagging_client_gets_latest_state_once_and_events_kept() -> None:
    hub = LiveHub(district_of, client_capacity=10)
    slow = hub.attach(Subscription())
    fast = hub.attach(Subscription())
    frames(hub, slow)
    frames(hub, fast)
    for i in range(200):
        hub.on_record(reading(f"D{i % 3}", i), T0)
        if i % 50 == 0:
            hub.on_record(DeviceEvent("D0", "traffic", T0 + timedelta(seconds=i), "loop_fault", "minor"), T0)
        if i % 5 == 0:
            assert len(frames(hub, fast)) > 0  # the fast client keeps up regardless
    assert len(slow.queue) <= 10
    got = frames(hub, slow)
    assert got[0]["type"] == "lagged" and got[0]["dropped_frames"] > 0
    devices = [f for f in got if f["type"] == "device"]
    assert sorted(d["device_id"] for d in devices) == ["D0", "D1", "D2"]
    assert {d["device_id"]: d["latest"]["speed_kmh"]["value"] for d in devices} == {"D0": 198.0, "D1": 199.0,
                                                                                    "D2": 197.0}
    assert len([f for f in got if f["type"] == "event"]) == 4
    hub.on_record(reading("D1", 500), T0)
    assert [f["type"] for f in frames(hub, slow)] == ["reading"]  # back to normal


def test_resume_from_sequence_replays_missed_frames_or_snapshots() -> None:
    hub = LiveHub(district_of, ring_size=100)
    for i in range(10):
        hub.on_record(reading("D1", i), T0)
    client = hub.attach(Subscription(), resume_from=6, epoch=hub.epoch)
    got = frames(hub, client)
    assert got[0]["type"] == "resumed" and [f["seq"] for f in got[1:]] == [7, 8, 9, 10]
    other_epoch = hub.attach(Subscription(), resume_from=6, epoch="previous-process")
    assert frames(hub, other_epoch)[0]["type"] == "snapshot"
    for i in range(10, 300):
        hub.on_record(reading("D1", i), T0)
    too_old = hub.attach(Subscription(), resume_from=6, epoch=hub.epoch)
    assert frames(hub, too_old)[0]["type"] == "snapshot"


def test_redelivered_reading_and_stale_status_make_no_frame() -> None:
    hub = LiveHub(district_of)
    client = hub.attach(Subscription())
    frames(hub, client)
    hub.on_record(reading("D1", 5), T0)
    hub.on_record(reading("D1", 5), T0)  # the broker redelivered it
    hub.on_record(StatusUpdate("D1", "traffic", T0 + timedelta(seconds=9), "offline", "lwt"), T0)
    hub.on_record(StatusUpdate("D1", "traffic", T0, "online", None), T0)  # older than what we hold
    assert [f["type"] for f in frames(hub, client)] == ["reading", "status"]
    assert hub.table.devices["D1"].state == "offline"
    assert hub.summary() == [{"district": None, "kind": "traffic", "total": 1, "online": 0, "offline": 1,
                              "degraded": 0, "unknown": 0}]


def test_device_placed_from_the_registry_is_pushed_with_its_district() -> None:
    # A device that reported before the hub knew its position is placed by the registry sync: screens must
    # learn its district then (a district tile counts it), not at its next report, which may be a minute away.
    hub = LiveHub(district_of)
    hub.on_record(reading("B1", 0), T0)
    client = hub.attach(Subscription.parse({"districts": "NORTH", "types": ["status"]}))
    (snap,) = frames(hub, client)
    assert snap["devices"] == []
    hub.place("B1", 20.95, 106.7)
    (got,) = frames(hub, client)
    assert (got["type"], got["device_id"], got["district"], got["lat"]) == ("device", "B1", "NORTH", 20.95)
    assert got["latest"]["speed_kmh"]["value"] == 0.0
    hub.place("B1", 20.80, 106.7)  # a device with a position is not moved by the registry
    assert frames(hub, client) == []
