"""A live replica whose process stops running for 2 s (its event loop blocked) while devices keep sending: the
backlog read afterwards waited in the socket, so it is set aside and each device's newest shown, not readings
seconds old (ioc/live/backlog.py), through a real Mosquitto."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

import orjson
import pytest

from ingest.records import ParsedMessage, Reading, Snapshot
from ioc.live.hub import LiveHub
from ioc.live.source import LiveListener
from ioc.settings import Settings
from tests.support.corpus import small_jpeg
from tests.support.mqtt import Publisher, iso, unique_id

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # timing bounds: alone under xdist (tests/conftest.py)

STALL_S, BEFORE_S, AFTER_S, PERIOD_S = 2.0, 1.0, 1.0, 0.02
#: The devices' clocks, never trusted, learned: hours behind to minutes ahead (more is refused by the parser).
OFFSETS = (-5 * 3600, -3600, -600, -1.5, 0, 0, 0.3, 30, 90, 240)


def _publish_for(pub: Publisher, seconds: float, send: object) -> threading.Thread:
    """Call ``send(i)`` every PERIOD_S for ``seconds`` on a thread of its own (the devices keep sending)."""
    def run() -> None:
        began, i = time.monotonic(), 0
        while time.monotonic() - began < seconds:
            send(i)  # type: ignore[operator]
            i += 1
            time.sleep(PERIOD_S)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def _stall_while_publishing(listener: LiveListener, thread: threading.Thread) -> None:
    await asyncio.sleep(BEFORE_S)  # the intake learns the devices' clocks and the input rate
    time.sleep(STALL_S)  # the whole event loop held (a stop-the-world pause, a descheduled process)
    await asyncio.to_thread(thread.join, BEFORE_S + STALL_S + AFTER_S + 10)


async def test_readings_that_waited_out_a_stall_are_coalesced_and_the_newest_shown(mqtt_port: int) -> None:
    settings = Settings(mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}")
    settings.live.shed_after_ms = 150
    prefix = unique_id("STALL")
    devices = [f"{prefix}-{i}" for i in range(10)]
    offset_of = dict(zip(devices, OFFSETS, strict=True))
    hub = LiveHub()
    in_order_age: list[float] = []  # how old each reading handled in order was (sent -> handled)
    late: list[int] = []  # this test's readings handled as late
    late_any: list[int] = []  # ... and any device's (the broker is shared: shed and superseded count them all)
    last_sent: dict[str, int] = {}

    def on_time(parsed: ParsedMessage) -> None:
        now = datetime.now(UTC)
        in_order_age.extend((now - r.ts).total_seconds() + offset_of[r.device_id] for r in parsed.records
                            if isinstance(r, Reading) and r.device_id.startswith(prefix))

    def set_aside(parsed: ParsedMessage) -> None:
        late.extend(1 for r in parsed.records if r.device_id.startswith(prefix))
        late_any.extend(1 for _ in parsed.records)

    listener = LiveListener(settings, (hub.on_parsed, on_time), (hub.on_parsed_late, set_aside))
    task = asyncio.create_task(listener.run())
    pub = Publisher(mqtt_port)

    def send(i: int) -> None:
        for dev, offset in zip(devices, OFFSETS, strict=True):  # 500 msg/s, each device's clock its own
            pub.publish(f"ioc/v1/traffic/{dev}/telemetry", {"ts": iso(time.time() + offset), "seq": i,
                                                            "metrics": {"speed_kmh": float(i)}}, qos=0)
            last_sent[dev] = i

    try:
        await listener.session.wait_connected(15)
        await _stall_while_publishing(listener, _publish_for(pub, BEFORE_S + STALL_S + AFTER_S, send))
        deadline = time.monotonic() + 10
        while any(_latest_speed(hub, d) != last_sent[d] for d in devices):
            assert time.monotonic() < deadline, (listener.intake.stats(),
                                                 [(_latest_speed(hub, d), last_sent[d]) for d in devices])
            await asyncio.sleep(0.05)
    finally:
        pub.close()
        await listener.stop()
        await asyncio.wait_for(task, 10)

    stats = listener.intake.stats()
    assert stats["intake_aged_by_stamp"] > 100 and stats["intake_shed"] > 100, stats  # the backlog, ~1,000
    assert stats["intake_stalls"] >= 1 and stats["intake_stall_s"] >= STALL_S * 0.9, stats
    # the backlog's newest per device shown as its state (a coalesced ``device`` frame) once caught up, unless a
    # fresh reading read after it superseded it; every device's newest value is shown either way (the wait above)
    # (only this test's devices: the broker is shared, and another process's devices may be in the ring too)
    assert sum(f.type == "device" and f.device_id.startswith(prefix) for f in hub.ring) == len(late)
    assert len(late_any) + stats["intake_superseded"] >= stats["intake_shed"], stats
    # no reading reached the screens as a reading after waiting out the stall (without the stamps' evidence
    # the backlog counted as fresh: readings up to 2 s old went out in order)
    assert max(in_order_age) < 0.5, sorted(in_order_age)[-5:]


def _latest_speed(hub: LiveHub, device_id: str) -> float | None:
    dev = hub.table.devices.get(device_id)
    return None if dev is None or "speed_kmh" not in dev.latest else dev.latest["speed_kmh"][1]


async def test_snapshots_without_a_stamp_are_aged_by_the_stall_itself(mqtt_port: int) -> None:
    settings = Settings(mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}")
    settings.live.shed_after_ms = 150
    cameras = [unique_id("STALLCAM") for _ in range(3)]
    pictures = [small_jpeg(seed, 16, 16) for seed in range(1000)]  # each sent once: its bytes say when
    sent_at: dict[bytes, float] = {}  # picture -> when it was sent
    last_sent: dict[str, bytes] = {}
    in_order_age: list[float] = []
    late: list[str] = []  # any device's message handled as late, once per catch-up (a loaded machine has several)
    shown: dict[str, bytes] = {}  # the newest picture each camera's screens got, in order or set aside

    def on_time(parsed: ParsedMessage) -> None:
        now = time.monotonic()
        for r in parsed.records:
            if isinstance(r, Snapshot) and r.device_id in cameras:
                in_order_age.append(now - sent_at[r.jpeg])
                shown[r.device_id] = r.jpeg

    def set_aside(parsed: ParsedMessage) -> None:
        for r in parsed.records:
            late.append(r.device_id)  # shed and superseded count every device on the shared broker
            if isinstance(r, Snapshot) and r.device_id in cameras:
                shown[r.device_id] = r.jpeg

    listener = LiveListener(settings, (on_time,), (set_aside,))
    task = asyncio.create_task(listener.run())
    pub = Publisher(mqtt_port)

    def send(i: int) -> None:
        for n, cam in enumerate(cameras):  # a camera's picture carries no stamp: only the stall can age it
            picture = pictures[(i * len(cameras) + n) % len(pictures)]
            sent_at[picture] = time.monotonic()
            pub.publish(f"ioc/v1/camera/{cam}/snapshot", picture, qos=0)
            last_sent[cam] = picture

    try:
        await listener.session.wait_connected(15)
        await _stall_while_publishing(listener, _publish_for(pub, BEFORE_S + STALL_S + AFTER_S, send))
        await asyncio.sleep(0.5)
    finally:
        pub.close()
        await listener.stop()
        await asyncio.wait_for(task, 10)

    stats = listener.intake.stats()
    assert stats["intake_aged_by_stall"] > 20 and stats["intake_aged_by_stamp"] == 0, stats
    assert stats["intake_stalls"] >= 1, stats
    # the backlog's newest per camera shown once caught up, or (here, usually) superseded by a fresh one
    assert len(late) + stats["intake_superseded"] >= stats["intake_shed"], stats
    assert shown == last_sent  # every camera's newest picture shown
    # the pictures that had waited out the stall did not go out in order as if fresh
    assert max(in_order_age) < 1.0, sorted(in_order_age)[-5:]
    assert orjson.dumps(stats)  # the stats stay plain JSON for GET /api/live/stats
