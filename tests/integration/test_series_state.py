"""The numeric monitor's learned state, saved per device and incrementally, in the real database.

Only devices that learned something since the last save are written (fenced, one statement); a new stage
(the next leader) restores every device; a save refused by the fence keeps its devices for the next one;
a deployment from before the per-device table is read once from its single row.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from analytics.numeric import kernel
from analytics.numeric.device_state import encode_devices, restore_devices
from analytics.numeric.monitor import NumericMonitor
from ingest.records import ParsedMessage, Reading
from ioc.analytics_stage import SERIES_SCOPE, STATE_NAME, AnalyticsStage
from ioc.live.hub import LiveHub
from storage.cluster import FencedError
from storage.config import StorageConfig
from storage.db import create_pool
from storage.writes import save_state

pytestmark = pytest.mark.integration


def feed(stage: AnalyticsStage, devices: list[str], start: datetime, minutes: int) -> None:
    """A reading a minute per device, through the sink, analysed as ``run`` would."""
    for i in range(minutes):
        ts = start + timedelta(minutes=i)
        for j, dev in enumerate(devices):
            stage.on_parsed(ParsedMessage([Reading(dev, "traffic", ts, {"speed_kmh": 40.0 + j + i % 4,
                                                                         "occupancy_pct": 20.0 + i % 3})], []))
        stage.step(ts)


async def saved_at(pool: Any, devices: list[str]) -> dict[str, datetime]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT device_id, updated_at FROM series_state WHERE scope = $1 AND "
                                "device_id = ANY($2::text[])", SERIES_SCOPE, devices)
    return {r["device_id"]: r["updated_at"] for r in rows}


async def test_only_changed_devices_are_saved_and_a_new_stage_restores_all(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    tag = uuid.uuid4().hex[:8]
    devices = [f"tr-{tag}-{i}" for i in range(5)]
    start = datetime.now(UTC) - timedelta(hours=2)
    try:
        first = AnalyticsStage(LiveHub(), pool, camera_processes=0)
        fenced: list[int] = []

        async def guard(conn: Any, rows: Any) -> None:
            fenced.append(1)

        first.guard = guard
        feed(first, devices, start, 60)
        await first.save()
        assert fenced, "the save runs inside the leader's fence"
        before = await saved_at(pool, devices)
        assert set(before) == set(devices)

        feed(first, devices[:1], start + timedelta(minutes=60), 1)  # only one device learns something
        await first.save()
        after = await saved_at(pool, devices)
        assert after[devices[0]] > before[devices[0]]
        assert all(after[d] == before[d] for d in devices[1:])

        # a save the fence refuses (this process lost the lease) writes nothing and keeps the device dirty
        async def refuse(conn: Any, rows: Any) -> None:
            raise FencedError("lease lost")

        first.guard = refuse
        feed(first, devices[1:2], start + timedelta(minutes=61), 1)
        await first.save()
        assert (await saved_at(pool, devices))[devices[1]] == before[devices[1]]
        first.guard = guard
        await first.save()
        assert (await saved_at(pool, devices))[devices[1]] > before[devices[1]]

        second = AnalyticsStage(LiveHub(), pool, camera_processes=0)
        await second.load()
        for dev in devices:
            for metric in ("speed_kmh", "occupancy_pct"):
                a = first.monitor.table.keys[(dev, metric)]
                b = second.monitor.table.keys[(dev, metric)]
                assert np.array_equal(first.monitor.bank.F[a], second.monitor.bank.F[b])
                assert np.array_equal(first.monitor.bank.D[a], second.monitor.bank.D[b])
        assert not second.monitor.dirty  # restored, nothing new to save
    finally:
        await pool.close()


async def test_a_deployment_saved_whole_is_read_once_then_saved_per_device(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    tag = uuid.uuid4().hex[:8]
    scope = f"numeric-{tag}"  # a scope nothing else wrote: as a database from before migration 0010
    old = NumericMonitor()
    t0 = datetime.now(UTC).timestamp() - 7200
    old.ingest([(f"bts-{tag}", "battery_pct", t0 + 60 * i, 90.0 + i % 3) for i in range(50)])
    try:
        async with pool.acquire() as conn:
            await save_state(conn, STATE_NAME, old.to_state())
        stage = AnalyticsStage(LiveHub(), pool, camera_processes=0)
        stage.series_scope = scope
        await stage.load()
        assert (f"bts-{tag}", "battery_pct") in stage.monitor.table.keys
        await stage.save()
        async with pool.acquire() as conn:
            count = await conn.fetchval("SELECT count(*) FROM series_state WHERE scope = $1", scope)
        assert count >= 1
    finally:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM analytics_state WHERE name = $1", STATE_NAME)
            await conn.execute("DELETE FROM series_state WHERE scope = $1", scope)
        await pool.close()


def reading(stage: AnalyticsStage, dev: str, ts: datetime, speed: float) -> list[Any]:
    """One traffic reading through the sink, analysed as ``run`` would; the findings it raised."""
    found: list[Any] = []
    stage.on_findings = found.extend
    stage.on_parsed(ParsedMessage([Reading(dev, "traffic", ts, {"speed_kmh": speed})], []))
    stage.step(ts)
    return found


async def test_two_tiers_a_finding_is_saved_at_once_a_quiet_device_once_per_full_interval(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    stage = AnalyticsStage(LiveHub(), pool, camera_processes=0, state_every_s=15.0, full_every_s=300.0)
    tag = uuid.uuid4().hex[:8]
    # the quiet device's slot falls well inside the interval, not in the first pass
    quiet = next(d for i in range(100) if 60.0 < stage.plan.next_slot(d := f"tq-{tag}-{i}", 0.0) < 240.0)
    loud = f"tl-{tag}"
    start = datetime.now(UTC) - timedelta(days=2)
    rng = np.random.default_rng(2)
    try:
        for i in range(432):  # a day and a half every 5 minutes: the detectors are warm
            for dev in (quiet, loud):
                assert not reading(stage, dev, start + timedelta(minutes=5 * i), 50.0 + rng.normal(0, 1.0))
        await stage.save()  # everything, as at shutdown
        await stage.save(now=0.0)  # the plan's first pass
        saved = await saved_at(pool, [quiet, loud])
        t = start + timedelta(minutes=5 * 432)
        before_spike = encode_devices(stage.monitor, [loud])  # what a 300 s save might still hold

        assert reading(stage, quiet, t, 50.3) == []
        assert reading(stage, loud, t, 250.0), "the spike raises a finding"
        await stage.save(now=15.0)
        now = await saved_at(pool, [quiet, loud])
        assert now[loud] > saved[loud], "saved within the short interval"
        assert now[quiet] == saved[quiet], "quiet learning waits for the device's slot"

        slot = stage.plan.next_slot(quiet, 0.0)
        writes = []
        for k in range(2, int((slot + 300.0) // 15.0) + 2):  # a pass every 15 s past the next slot
            assert reading(stage, quiet, t + timedelta(seconds=15 * k), 50.0 + rng.normal(0, 1.0)) == []
            await stage.save(now=15.0 * k)
            after = (await saved_at(pool, [quiet]))[quiet]
            if after > saved[quiet]:
                writes.append(15.0 * k)
                saved[quiet] = after
        assert writes == [15.0 * np.ceil(slot / 15.0), 15.0 * np.ceil((slot + 300.0) / 15.0)], (writes, slot)

        # the next leader restores the hold of the fired series: the episode's next reading raises nothing
        second = AnalyticsStage(LiveHub(), pool, camera_processes=0)
        await second.load()
        row_a = stage.monitor.table.keys[(loud, "speed_kmh")]
        row_b = second.monitor.table.keys[(loud, "speed_kmh")]
        for col in (kernel.HOLD, kernel.ALERT, kernel.N):
            assert stage.monitor.bank.F[row_a, col] == second.monitor.bank.F[row_b, col]
        assert second.monitor.bank.F[row_b, kernel.N] < second.monitor.bank.F[row_b, kernel.HOLD]
        later = t + timedelta(minutes=5)
        assert reading(second, loud, later, 245.0) == [], "no re-raise of the episode already reported"
        stale = AnalyticsStage(LiveHub(), None, camera_processes=0)  # restored from the state before the spike
        restore_devices(stale.monitor, before_spike)
        assert reading(stale, loud, later, 245.0), "without the saved hold the episode is raised again"
    finally:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM series_state WHERE scope = $1 AND device_id = ANY($2::text[])",
                               SERIES_SCOPE, [quiet, loud])
        await pool.close()
