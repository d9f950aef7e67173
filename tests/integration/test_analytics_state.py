"""The analytics stage keeps what it learned across a restart, in the real database.

Each camera's scene, snapshot arrivals and the numeric series survive; the restart's own downtime is not
taken for devices falling silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from analytics.camera.stale import StaleMonitor
from analytics.findings import Finding
from ingest.records import ParsedMessage, Reading, Snapshot
from ioc.analytics_stage import AnalyticsStage
from ioc.camera_shards import CAMERA_STATE_PREFIX
from ioc.live.hub import LiveHub
from storage.config import StorageConfig
from storage.db import create_pool
from tests.conftest import create_database
from tests.support.services import private_postgres
from tests.unit.test_camera_analyser import T0, Road, jpeg, warp

pytestmark = pytest.mark.integration


async def analyse(stage: AnalyticsStage, device_id: str, frames: list[bytes], start: int = 0) -> list[str]:
    """Feed snapshots one at a time as the ingest would; the health labels the shards returned."""
    labels: list[str] = []
    stage.on_health = lambda dev, label, conf, ts: labels.append(label)
    for i, data in enumerate(frames):
        snap = Snapshot(device_id, "camera", T0 + timedelta(seconds=5 * (start + i)), data, 640, 360)
        stage.on_parsed(ParsedMessage([snap], []))
        for _ in range(600):  # the first one waits for the shard process to start
            if len(labels) > i:
                break
            await asyncio.sleep(0.05)
    assert len(labels) == len(frames), labels
    return labels


async def test_camera_re_pointed_while_the_service_was_down_is_reported_after_restart(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    cam = f"cam-{uuid.uuid4().hex[:8]}"
    road = Road(6)
    moved = [jpeg(warp(road.frame(t), 0.14 * 640, -0.06 * 360)) for t in range(40, 44)]
    try:
        first = AnalyticsStage(LiveHub(), pool, camera_processes=1)
        try:
            labels = await analyse(first, cam, [jpeg(road.frame(t), 80 + t % 15) for t in range(16)])
            assert labels == ["ok"] * 16
            await first.save()  # as at shutdown
        finally:
            first.close()
        async with pool.acquire() as conn:
            saved = await conn.fetchval("SELECT length(state) FROM analytics_state WHERE name = $1",
                                        CAMERA_STATE_PREFIX + cam)
        assert 10_000 < saved < 200_000

        # Restarted with another number of shard processes; meanwhile the camera was turned.
        second = AnalyticsStage(LiveHub(), pool, camera_processes=2)
        try:
            await second.load()
            labels = await analyse(second, cam, moved, start=100)
            assert "shift" in labels[:2], labels
        finally:
            second.close()

        # A saved scene older than the limit is not restored: the camera learns afresh (and sees nothing).
        third = AnalyticsStage(LiveHub(), pool, camera_processes=1, camera_state_max_age_s=0.001)
        try:
            await third.load()
            assert await analyse(third, cam, moved, start=200) == ["ok"] * 4
        finally:
            third.close()
    finally:
        await pool.close()


async def test_restart_after_downtime_reports_only_the_camera_that_stays_dark(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    tag = uuid.uuid4().hex[:8]
    dark, back, sensor = f"cam-{tag}-dark", f"cam-{tag}-back", f"tr-{tag}"
    frame = jpeg(Road(6).frame(0))
    past = datetime.now(UTC) - timedelta(hours=3)  # the service has been down for three hours
    try:
        first = AnalyticsStage(LiveHub(), pool, camera_processes=0)
        first.stale = StaleMonitor(min_gap_s=1.0)
        for i in range(12):
            ts = past - timedelta(minutes=5 * (12 - i))
            first.on_parsed(ParsedMessage([Reading(sensor, "traffic", ts, {"speed_kmh": 48.0 + i % 3})], []))
            for cam in (dark, back):
                first.on_parsed(ParsedMessage([Snapshot(cam, "camera", past + timedelta(seconds=0.2 * i), frame,
                                                        640, 360)], []))
        first.step(past)
        await first.save()
        first.close()

        second = AnalyticsStage(LiveHub(), pool, camera_processes=0, flush_s=0.1, silence_every_s=0.2,
                                state_every_s=3600.0)
        second.stale = StaleMonitor(min_gap_s=1.0)
        await second.load()
        now = datetime.now(UTC)
        # restored, and counted from the restart: silent only once its usual silence has passed since then
        assert second.monitor.check_silence(now, since=second.started) == []
        later = second.monitor.check_silence(now + timedelta(hours=1), since=second.started)
        # (the state is per device: devices other tests saved in this database are restored too)
        assert [f.device_id for f in later if tag in f.device_id] == [sensor]

        found: list[Finding] = []
        second.on_findings = found.extend
        task = asyncio.create_task(second.run())
        await asyncio.sleep(0.6)  # silence checks run meanwhile: no camera has reported since the restart yet
        for _ in range(10):  # then one camera is back, the other stays dark
            second.on_parsed(ParsedMessage([Snapshot(back, "camera", datetime.now(UTC), frame, 640, 360)], []))
            await asyncio.sleep(0.25)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stale = [f for f in found if f.type == "stale"]
        assert [f.device_id for f in stale] == [dark]
        assert stale[0].ts >= second.started + timedelta(seconds=1.2)  # its usual limit, counted from the restart
        assert stale[0].detail["gap_s"] > 3 * 3600 - 60
        assert not [f for f in found if f.type == "silence"]
    finally:
        await pool.close()


async def test_a_stage_loading_while_the_database_is_stopped_waits_and_restores_rather_than_learning_afresh() -> None:
    """A takeover often comes with trouble in the database: a new leader that learned from scratch would overwrite
    weeks of saved state with its first saves. It waits for the database instead, then restores."""
    sensor = f"tr-{uuid.uuid4().hex[:8]}"
    with private_postgres() as pg:
        dsn = await create_database(pg.dsn)
        pool = await create_pool(dsn, StorageConfig(), max_size=2)
        try:
            first = AnalyticsStage(LiveHub(), pool, camera_processes=0)
            start = datetime.now(UTC) - timedelta(hours=2)
            for i in range(24):
                first.on_parsed(ParsedMessage([Reading(sensor, "traffic", start + timedelta(minutes=5 * i),
                                                       {"speed_kmh": 48.0 + i % 3})], []))
            first.step(start + timedelta(hours=2))
            await first.save()
            first.close()
            learned = len(first.monitor.table)

            await asyncio.to_thread(pg.stop)
            second = AnalyticsStage(LiveHub(), pool, camera_processes=0)
            loading = asyncio.create_task(second.load())
            await asyncio.sleep(3.0)
            assert not loading.done()  # still waiting for the database, not learning afresh
            await asyncio.to_thread(pg.start)
            await asyncio.wait_for(loading, 60)
            assert len(second.monitor.table) == learned > 0
            second.close()
        finally:
            await pool.close()
