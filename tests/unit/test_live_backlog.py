"""How long a message waited before the live replica read it, without trusting device clocks
(ioc/live/backlog.py): the per-device offset filter, the loop-stall estimate, and the intake using both."""

from __future__ import annotations

import itertools
import random
import time
import tracemalloc

import orjson
import paho.mqtt.client as mqtt
import pytest

from ioc.live.backlog import DeviceClocks, LoopStalls, device_stamp
from ioc.live.intake import LiveIntake

pytestmark = pytest.mark.unit

DEV = b"ioc/v1/traffic/T1"
#: This process's monotonic clock is ~1e4..1e6 s; device clocks are epoch seconds: offsets of -1.7e9 s.
EPOCH = 1_796_600_000.0


def _age(clocks: DeviceClocks, device: bytes, stamp: float, read: float) -> float:
    return read - clocks.earliest(device, stamp, read)


def test_device_stamp_reads_rfc3339_and_epoch_ms_and_gives_up_on_anything_else() -> None:
    assert device_stamp(b'{"ts":"2026-12-07T04:00:00.250Z","metrics":{}}') == pytest.approx(1796616000.25)
    assert device_stamp(b'{"seq": 3, "ts" : "2026-12-07T11:00:00+07:00"}') == pytest.approx(1796616000.0)
    assert device_stamp(b'{"ts":1796616000250,"metrics":{}}') == pytest.approx(1796616000.25)
    assert device_stamp(b'[{"ts":1796616000000},{"ts":1796616009000}]') == pytest.approx(1796616000.0)  # batch
    for bad in (b'{"metrics":{}}', b'{"ts":"2026-12-07T04:00:00"}', b'{"ts":"yesterday, roughly"}',
                b'{"ts":null}', b'{"ts":1e12}', b'{"ts":"2026-13-45T99:00:00Z"}', b"\xff\xd8\xff\xe0 jpeg",
                b" " * 600 + b'{"ts":1796616000000}'):
        assert device_stamp(bad) is None, bad


@pytest.mark.parametrize("offset_s", [0.0, 3 * 3600.0, -5 * 3600.0, 1e-3])
def test_offset_of_hours_and_jitter_are_learned_and_a_held_message_is_seen_old(offset_s: float) -> None:
    rng = random.Random(7)
    clocks = DeviceClocks(bucket_s=60)
    read = 1000.0
    ages = []
    for i in range(600):  # 10 minutes at 1 msg/s, transit 5-35 ms
        sent = EPOCH + i
        read = 1000.0 + i + 0.005 + rng.random() * 0.03
        ages.append(_age(clocks, DEV, sent + offset_s, read))
    assert max(ages) < 0.031  # jitter only: never near the 150 ms shed limit
    # a message sent now but read 2 s late (it sat in the socket while the process was stopped)
    assert _age(clocks, DEV, EPOCH + 600 + offset_s, 1000.0 + 600 + 2.02) == pytest.approx(2.0, abs=0.04)


def test_a_clock_step_back_is_followed_within_two_buckets_and_a_step_forward_at_once() -> None:
    clocks = DeviceClocks(bucket_s=60)
    for i in range(300):
        _age(clocks, DEV, EPOCH + i, 1000.0 + i + 0.01)
    # the device's clock steps 10 s back (NTP correcting it): its readings look 10 s old for a while...
    stepped = [_age(clocks, DEV, EPOCH + i - 10, 1000.0 + i + 0.01) for i in range(300, 600)]
    assert stepped[0] == pytest.approx(10.0)
    followed = next(n for n, age in enumerate(stepped) if age < 0.001)
    assert followed <= 120  # ... at most two buckets of 60 s, then fresh again
    assert max(stepped[followed:]) < 0.001
    # a step forward only makes the sample smaller: followed at once
    assert _age(clocks, DEV, EPOCH + 600 + 30, 1000.0 + 600 + 0.01) == 0.0
    assert _age(clocks, DEV, EPOCH + 601 + 30, 1000.0 + 601 + 0.01) == 0.0


def test_a_stall_longer_than_the_window_is_still_measured_against_the_minimum_from_before() -> None:
    clocks = DeviceClocks(bucket_s=60)
    for i in range(100):
        _age(clocks, DEV, EPOCH + i, 1000.0 + i + 0.01)
    # the process is stopped for 10 minutes; the backlog (one message a second) is read at once
    ages = [_age(clocks, DEV, EPOCH + 100 + k, 1000.0 + 700 + k * 1e-4) for k in range(600)]
    assert ages[0] == pytest.approx(600, abs=0.1) and ages[-1] == pytest.approx(1, abs=0.1)
    assert all(a > b for a, b in itertools.pairwise(ages))  # oldest first, each older than the next


def test_hostile_stamps_move_only_their_own_device() -> None:
    clocks = DeviceClocks(bucket_s=60)
    honest, hostile = b"ioc/v1/traffic/GOOD", b"ioc/v1/traffic/EVIL"
    rng = random.Random(3)
    good, evil = [], []
    for i in range(300):
        read = 1000.0 + i + 0.01
        good.append(_age(clocks, honest, EPOCH + i, read))
        # stamps an hour in the future, jumping back and forth, then garbage far in the past
        stamp = EPOCH + i + rng.choice((3600.0, -86_400.0, 0.0, 1e6))
        evil.append(_age(clocks, hostile, stamp, read))
    assert max(good) < 1e-9  # never touched by the other device
    assert min(evil) >= 0.0  # never fresher than its read: nothing can be made to jump the queue
    assert max(evil) > 1000  # its own readings look old: set aside, shown as its newest state


def test_the_table_is_bounded_and_forgets_the_least_recently_seen() -> None:
    clocks = DeviceClocks(max_devices=3)
    for name in (b"a", b"b", b"c", b"a", b"d"):  # "b" is the least recently seen when "d" comes
        clocks.earliest(name, EPOCH, 1000.0)
    assert list(clocks.table) == [b"c", b"a", b"d"] and clocks.evicted == 1
    # a forgotten device starts again: aged from its read until its offset is learned again
    assert _age(clocks, b"b", EPOCH - 50, 1000.0) == 0.0


def test_memory_per_device_is_about_300_bytes() -> None:
    clocks = DeviceClocks(max_devices=20_000, bucket_s=0.0)
    tracemalloc.start()
    try:
        for rnd in range(3):  # three rounds: each entry holds distinct floats, as in service
            for i in range(20_000):
                topic = f"ioc/v1/traffic/TR-{i:06d}/telemetry".encode()
                clocks.earliest(topic[:topic.rfind(b"/")], EPOCH + i + rnd * 0.5, 1000.0 + rnd)
        per_device = tracemalloc.get_traced_memory()[0] / 20_000
    finally:
        tracemalloc.stop()
    assert 200 < per_device < 400, per_device  # 100,000 devices: ~32 MB


def test_loop_stall_backdates_the_backlog_read_after_it_until_caught_up() -> None:
    stalls = LoopStalls(tick_s=0.02, stall_s=0.05)
    assert stalls.arrival(5.0) == 5.0  # nothing ticking: never a stall
    now = 10.0
    for _ in range(50):  # 1 s at 100 msg/s, ticking every 20 ms
        stalls.tick(now)
        for k in range(2):
            assert stalls.arrival(now + k * 0.01) == now + k * 0.01
        now += 0.02
    assert stalls.rate == pytest.approx(100, rel=0.05)
    began = now - 0.02
    # the loop is held 2 s; ~200 messages wait in the socket and are read at once, before the late tick runs
    read = began + 2.0
    backlog = [stalls.arrival(read) for _ in range(200)]
    assert backlog[0] == began and backlog[100] == pytest.approx(began + 100 / stalls.use_rate)
    assert backlog[100] == pytest.approx(began + 1.0, abs=0.01)
    assert read - backlog[-1] == pytest.approx(0.01, abs=0.02)  # the last one read had just come
    assert stalls.stalls == 1 and stalls.stall_s == pytest.approx(2.0)
    stalls.tick(read)
    assert stalls.stalls == 1  # the late tick does not count the stall again
    assert stalls.arrival(read + 0.01) == read + 0.01  # caught up: what comes now is new
    for k in range(1, 4):
        stalls.tick(read + 0.02 * k)
        stalls.arrival(read + 0.02 * k + 0.001)
        stalls.arrival(read + 0.02 * k + 0.002)
    assert stalls.rate == pytest.approx(100, rel=0.05)  # the backlog's burst is not taken for the input rate


def test_loop_stall_with_an_idle_feed_ends_at_the_first_quiet_tick() -> None:
    stalls = LoopStalls(tick_s=0.02, stall_s=0.05)
    stalls.tick(0.0)
    stalls.tick(3.0)  # held 3 s, nothing read yet
    assert stalls.arrival(3.001) == 0.0  # the one message that waited: as old as the stall
    stalls.tick(3.02)
    stalls.tick(3.04)  # a tick with nothing read: the socket had nothing left
    assert stalls.arrival(3.05) == 3.05


def _msg(topic: str, doc: dict[str, object]) -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = orjson.dumps(doc)
    return message


def test_intake_sets_aside_a_reading_its_device_stamp_shows_waited_and_no_other() -> None:
    seen: list[tuple[str, int, bool]] = []
    intake = LiveIntake(lambda m, late: seen.append((m.topic, orjson.loads(m.payload)["seq"], late)),
                        shed_after_s=0.15, turn_budget_s=10)
    base = time.time()
    for seq in range(3):  # learn both devices' offsets (one clock 2 h off): all fresh
        intake.push(_msg("ioc/v1/traffic/A/telemetry", {"ts": (base + 0.001 * seq) * 1000, "seq": seq}))
        intake.push(_msg("ioc/v1/traffic/B/telemetry", {"ts": (base + 7200 + 0.001 * seq) * 1000, "seq": seq}))
    intake.drain()
    assert all(not late for _, _, late in seen) and intake.shed == 0
    seen.clear()
    # A's next two readings were stamped 2 s before now: they waited in the socket; B's are current
    now = time.time()
    for seq in (3, 4):
        intake.push(_msg("ioc/v1/traffic/A/telemetry", {"ts": (now - 2.0 + 0.001 * seq) * 1000, "seq": seq}))
        intake.push(_msg("ioc/v1/traffic/B/telemetry", {"ts": (now + 7200) * 1000, "seq": seq}))
    intake.push(_msg("ioc/v1/traffic/A/status", {"ts": (now - 2.0) * 1000, "state": "online", "seq": 9}))
    intake.drain()
    # B in order; A's status never set aside; A's readings set aside, the newest shown once caught up
    assert seen == [("ioc/v1/traffic/B/telemetry", 3, False), ("ioc/v1/traffic/B/telemetry", 4, False),
                    ("ioc/v1/traffic/A/status", 9, False), ("ioc/v1/traffic/A/telemetry", 4, True)]
    stats = intake.stats()
    assert stats["intake_aged_by_stamp"] == 2 and stats["intake_backlog_aged"] == 2
    assert stats["intake_shed"] == 2 and stats["intake_superseded"] == 1 and stats["intake_clock_devices"] == 2
