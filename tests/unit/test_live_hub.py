"""The live hub with plain records: filters, coalescing of a lagging client, resume, redelivery."""

from __future__ import annotations

import time
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
    return [orjson.loads(t) for t in hub.take(client)]


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


async def test_screens_with_one_subscription_share_each_batch() -> None:
    """Frames are filtered and joined once per audience; every screen of it gets the same batch object."""
    hub = LiveHub(district_of, client_capacity=1000)
    screens = [hub.attach(Subscription.parse({"districts": "NORTH"})) for _ in range(50)]
    other = hub.attach(Subscription.parse({"districts": "SOUTH"}))
    assert len(hub.audiences) == 2
    for s in (*screens, other):
        hub.take_messages(s)  # the snapshots
    for i in range(20):
        hub.on_record(reading("N1", i, lat=20.95), T0)
    hub.on_record(reading("S1", 0, lat=20.80), T0)
    hub.flush()
    batches = {id(s.queue[0]) for s in screens}
    assert len(batches) == 1 and all(len(s.queue) == 1 for s in screens)  # one shared item, not 20 each
    (message,) = hub.take_messages(screens[0])
    assert [f["device_id"] for f in orjson.loads(message)] == ["N1"] * 20
    assert [f["device_id"] for f in orjson.loads(hub.take_messages(other)[0])] == ["S1"]


async def test_a_lagging_screen_does_not_hold_back_its_audience() -> None:
    hub = LiveHub(district_of, client_capacity=30)
    slow, fast = hub.attach(Subscription()), hub.attach(Subscription())
    hub.take(slow), hub.take(fast)
    for i in range(100):
        hub.on_record(reading(f"D{i % 5}", i), T0)
        hub.flush()
        hub.take_messages(fast)  # the fast screen keeps up
    assert slow.lagging and not fast.lagging
    got = frames(hub, slow)
    assert got[0]["type"] == "lagged" and sorted(f["device_id"] for f in got[1:]) == [f"D{i}" for i in range(5)]
    hub.on_record(reading("D0", 101), T0)
    assert [f["type"] for f in frames(hub, slow)] == ["reading"]  # back to live frames


def test_resubscribe_and_detach_keep_audiences_exact() -> None:
    hub = LiveHub(district_of)
    a = hub.attach(Subscription())
    b = hub.attach(Subscription())
    assert len(hub.audiences) == 1
    hub.resubscribe(b, Subscription.parse({"kinds": "bts"}))
    assert len(hub.audiences) == 2
    hub.detach(a)
    hub.detach(b)
    assert hub.audiences == {}


def test_a_big_turn_is_cut_into_messages_under_the_size_cap() -> None:
    """One event-loop turn may emit thousands of wide frames: no WebSocket message may exceed ~256 KiB."""
    from ioc.live.client import MAX_MESSAGE_BYTES

    hub = LiveHub(district_of, client_capacity=100_000)
    screen = hub.attach(Subscription())
    hub.take_messages(screen)
    wide = {f"wide_metric_{k:03d}": float(k) for k in range(100)}
    for i in range(2000):
        hub.on_record(Reading(f"W{i}", "traffic", T0, wide, 1), T0)
    messages = hub.take_messages(screen)  # flushes the turn into the audience's batches
    while screen.queue:
        messages += hub.take_messages(screen)
    assert len(messages) > 10 and all(len(m) <= MAX_MESSAGE_BYTES + 4096 for m in messages)
    assert sum(len(orjson.loads(m)) for m in messages) == 2000


def test_screens_connecting_together_share_one_snapshot_and_miss_nothing() -> None:
    hub = LiveHub(district_of)
    hub.on_record(reading("N1", 0, lat=20.95), T0)
    first = hub.attach(Subscription())
    (snap1,) = frames(hub, first)
    hub.on_record(reading("N1", 1), T0)  # between the two connections
    second = hub.attach(Subscription())
    got = frames(hub, second)
    assert got[0] == snap1  # the same snapshot text, not encoded again
    assert [(f["type"], f["dev_seq"]) for f in got[1:]] == [("reading", 1)]  # and what came after it
    assert [f["dev_seq"] for f in frames(hub, first)] == [1]


async def test_frames_of_one_batch_window_go_out_as_one_message() -> None:
    """With ``batch_s`` the frames emitted within the window reach a screen as one message, when it closes."""
    import asyncio

    hub = LiveHub(district_of, batch_s=60.0)  # a window no busy machine outlasts between two statements
    screen = hub.attach(Subscription())
    hub.take_messages(screen)
    for i in range(3):
        hub.on_record(reading("N1", i, lat=20.95), T0)
        await asyncio.sleep(0)  # several turns of the event loop, still one window
    assert not screen.queue
    timer = hub._flush_timer
    assert isinstance(timer, asyncio.TimerHandle) and timer.when() > asyncio.get_running_loop().time() + 30
    hub.batch_s = 0.01
    hub.on_record(reading("N1", 3, lat=20.95), T0)  # joins the open window
    assert not screen.queue
    timer._run()  # the window closes (as the loop would run it after 60 s)
    (message,) = hub.take_messages(screen)
    assert [f["dev_seq"] for f in orjson.loads(message)] == [0, 1, 2, 3]
    assert hub._flush_timer is None
    hub.on_record(reading("N1", 4, lat=20.95), T0)  # a new window, of 10 ms: the loop closes it
    await asyncio.wait_for(screen.wake.wait(), 30)
    (message,) = hub.take_messages(screen)
    assert [f["dev_seq"] for f in orjson.loads(message)] == [4]


def test_device_frames_and_snapshots_follow_every_change_of_a_device() -> None:
    """A device's encoded state is reused until it changes: a reading, a place, a camera's health."""
    hub = LiveHub(district_of, client_capacity=2)
    hub.on_record(reading("B1", 0), T0)
    hub.snapshot_extra = lambda: {"incidents": [{"id": 1}]}
    first = frames(hub, hub.attach(Subscription()))[0]
    assert first["devices"][0]["latest"]["speed_kmh"]["value"] == 0.0 and first["incidents"] == [{"id": 1}]
    slow = hub.attach(Subscription())
    frames(hub, slow)
    for i in range(1, 6):
        hub.on_record(reading("B1", i), T0)
    (lagged, device) = frames(hub, slow)
    assert lagged["type"] == "lagged" and device["type"] == "device" and device["coalesced"] is True
    assert device["seq"] == hub.seq and device["latest"]["speed_kmh"]["value"] == 5.0
    hub.place("B1", 20.95, 106.7)
    hub.set_health("B1", {"label": "ok", "ts": T0})
    assert [f["type"] for f in frames(hub, slow)] == ["device", "health"]
    hub.on_record(reading("B1", 6), T0)
    hub.on_record(reading("B1", 7), T0)
    hub.on_record(reading("B1", 8), T0)
    (_, device) = frames(hub, slow)
    assert (device["district"], device["health"]["label"], device["latest"]["speed_kmh"]["value"]) == (
        "NORTH", "ok", 8.0)
    hub._snapshots.clear()
    snap = frames(hub, hub.attach(Subscription()))[0]
    assert snap["type"] == "snapshot" and snap["seq"] == hub.seq and snap["devices"] == [
        {k: v for k, v in device.items() if k not in ("type", "seq", "coalesced")}]


def test_falling_behind_is_counted_and_told_apart_from_a_socket_that_does_not_take_data() -> None:
    hub = LiveHub(district_of, client_capacity=10)
    stuck, idle, gone = hub.attach(Subscription()), hub.attach(Subscription()), hub.attach(Subscription())
    for c in (stuck, idle, gone):
        hub.take(c)
    stuck.send_started = time.monotonic() - 1.0  # a send has waited 1 s for the screen to read
    for i in range(30):
        hub.on_record(reading(f"D{i % 3}", i), T0)
    hub.flush()
    assert stuck.lagging and idle.lagging and gone.lagging
    hub.detach(gone)  # counts of screens that left are kept
    assert (hub.lagged_total, hub.lagged_on_socket) == (3, 1)
    hub.take(idle)
    for i in range(30, 60):
        hub.on_record(reading(f"D{i % 3}", i), T0)
    hub.flush()
    assert (hub.lagged_total, hub.lagged_on_socket) == (4, 1)


def test_a_late_reading_is_shown_as_the_device_state_not_as_a_reading() -> None:
    from ingest.records import ParsedMessage

    hub = LiveHub(district_of)
    hub.on_record(reading("N1", 0, lat=20.95), T0)
    client = hub.attach(Subscription.parse({"districts": "NORTH", "types": "reading"}))
    frames(hub, client)  # the snapshot
    hub.on_parsed_late(ParsedMessage(records=[reading("N1", 5)], rejections=[]))
    (frame,) = frames(hub, client)
    assert frame["type"] == "device" and frame["coalesced"] is True  # passes a types filter, as after `lagged`
    assert frame["latest"]["speed_kmh"]["value"] == 5.0 and frame["district"] == "NORTH"
    hub.on_parsed_late(ParsedMessage(records=[reading("N1", 3)], rejections=[]))  # older than what is held
    assert frames(hub, client) == []
