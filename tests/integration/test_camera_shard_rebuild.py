"""A camera shard process killed with SIGKILL is rebuilt: its cameras are analysed again, from their saved scenes.

Real shard processes and the real database: the dead shard is seen (readiness says so), replaced, the saved
scene of its camera restored (a camera turned meanwhile is reported as shifted, which a fresh analyser could
not tell), and the other shard works on throughout.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from datetime import timedelta

import pytest

from ingest.records import ParsedMessage, Snapshot
from ioc.analytics_stage import SHARD_REBUILDS, AnalyticsStage
from ioc.live.hub import LiveHub
from storage.config import StorageConfig
from storage.db import create_pool
from tests.unit.test_camera_analyser import T0, Road, jpeg, warp

pytestmark = pytest.mark.integration


def camera_on(stage: AnalyticsStage, shard: int) -> str:
    """A fresh camera id that the stage sends to ``shard``."""
    while True:
        cam = f"cam-{uuid.uuid4().hex[:8]}"
        if stage._shard_of(cam) == shard:
            return cam


async def feed(stage: AnalyticsStage, labels: dict[str, list[str]], cam: str, frame: bytes, n: int,
               timeout_s: float = 60.0) -> list[str]:
    """Send one snapshot at a time (again while it is skipped) until ``n`` more labels came back for ``cam``."""
    got = labels.setdefault(cam, [])
    want = len(got) + n
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(got) < want:
        assert loop.time() < deadline, f"{cam}: {len(got)} of {want} labels"
        asked = len(got)
        ts = T0 + timedelta(seconds=5 * (len(got) + 1000 * len(labels)))
        stage.on_parsed(ParsedMessage([Snapshot(cam, "camera", ts, frame, 640, 360)], []))
        for _ in range(40):
            if len(got) > asked:
                break
            await asyncio.sleep(0.05)
    return got[want - n:]


async def test_a_killed_camera_shard_is_rebuilt_and_its_cameras_analysed_again(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    stage = AnalyticsStage(LiveHub(), pool, camera_processes=2)
    labels: dict[str, list[str]] = {}
    stage.on_health = lambda dev, label, conf, ts: labels.setdefault(dev, []).append(label)
    victim, other = camera_on(stage, 1), camera_on(stage, 0)
    road = Road(6)
    try:
        for t in range(16):
            assert await feed(stage, labels, victim, jpeg(road.frame(t), 80 + t % 15), 1) == ["ok"]
        assert await feed(stage, labels, other, jpeg(road.frame(0)), 1) == ["ok"]
        await stage.save()  # the scene the victim's camera learned is in the database
        assert stage.health_problems() == []

        rebuilds = SHARD_REBUILDS._value.get()
        pid = next(iter(stage._shards[1]._processes))
        os.kill(pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not stage.health_problems():  # seen dead without any new work for it
            assert loop.time() < deadline, "dead shard not noticed"
            await asyncio.sleep(0.05)
        assert stage.health_problems()[0].startswith("camera shard 1 dead")

        # the other shard carries on meanwhile
        assert await feed(stage, labels, other, jpeg(road.frame(1)), 1) == ["ok"]
        # the camera was turned while its shard was down: judged against its restored scene, it has shifted
        moved = [jpeg(warp(road.frame(t), 0.14 * 640, -0.06 * 360)) for t in range(40, 43)]
        after = [label for frame in moved for label in await feed(stage, labels, victim, frame, 1)]
        assert "shift" in after, after
        assert stage.health_problems() == []
        assert SHARD_REBUILDS._value.get() == rebuilds + 1
        assert pid not in stage._shards[1]._processes
    finally:
        stage.close()
        await pool.close()
