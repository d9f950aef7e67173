"""The analytics stage keeps each camera's learned scene across a restart, in the real database."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from ingest.records import ParsedMessage, Snapshot
from ioc.analytics_stage import CAMERA_STATE_PREFIX, AnalyticsStage
from ioc.live.hub import LiveHub
from storage.config import StorageConfig
from storage.db import create_pool
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
