"""A live replica short of CPU stays current: late readings are set aside, the newest per device shown,
status messages never dropped (ioc/live/intake.py), through a real Mosquitto."""

from __future__ import annotations

import asyncio
import time

import pytest

from ingest.records import ParsedMessage, Reading, StatusUpdate
from ioc.live.source import LiveListener
from ioc.settings import Settings
from tests.support.mqtt import Publisher, iso, unique_id

pytestmark = pytest.mark.integration

DEVICES, READINGS, SINK_S = 30, 40, 0.004  # 1,200 readings at 4 ms each: 4.8 s of work in order


async def test_a_slow_replica_sheds_late_readings_but_shows_every_device_and_status(mqtt_port: int) -> None:
    settings = Settings(mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}")
    settings.live.shed_after_ms = 150
    prefix = unique_id("SHED")
    devices = [f"{prefix}-{i}" for i in range(DEVICES)]
    readings: dict[str, list[int]] = {d: [] for d in devices}
    statuses: list[str] = []

    def slow_sink(parsed: ParsedMessage) -> None:
        for rec in parsed.records:
            if rec.device_id.startswith(prefix):
                time.sleep(SINK_S)  # the replica's work per message, as if short of CPU
                if isinstance(rec, Reading):
                    readings[rec.device_id].append(rec.seq or 0)
                elif isinstance(rec, StatusUpdate):
                    statuses.append(rec.device_id)

    listener = LiveListener(settings, (slow_sink,))
    task = asyncio.create_task(listener.run())
    pub = Publisher(mqtt_port)
    try:
        await listener.session.wait_connected(15)
        now = time.time()
        for i in range(READINGS):
            for dev in devices:
                pub.publish(f"ioc/v1/traffic/{dev}/telemetry",
                            {"ts": iso(now + i * 0.001), "seq": i, "metrics": {"speed_kmh": 30.0 + i}})
            if i == READINGS // 2:  # an outage in the middle of the burst
                for dev in devices[:5]:
                    pub.publish(f"ioc/v1/traffic/{dev}/status", {"ts": iso(now), "state": "offline"})
        await asyncio.to_thread(pub.wait_all)
        deadline = time.monotonic() + 60
        while not all(r and r[-1] == READINGS - 1 for r in readings.values()) or len(statuses) < 5:
            assert time.monotonic() < deadline, (listener.intake.stats(), statuses)
            await asyncio.sleep(0.1)
    finally:
        pub.close()
        await listener.stop()
        await asyncio.wait_for(task, 10)

    stats = listener.intake.stats()
    handled = sum(len(r) for r in readings.values())
    assert sorted(statuses) == sorted(devices[:5])  # every status, however late
    assert all(r == sorted(r) for r in readings.values())  # never an older reading after a newer one
    assert handled < DEVICES * READINGS  # readings were set aside...
    assert stats["intake_shed"] > 0 and stats["intake_superseded"] > 0
    # ... so the replica never fell seconds behind (in order, the last would have waited ~4.8 s)
    assert stats["intake_lag_max_ms"] < 2500, stats
