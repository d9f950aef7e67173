"""A partition worker saves its numeric state in the brain's two tiers (real NATS JetStream and PostgreSQL).

A device whose series fired is saved at the next pass, a device that only learns quietly at its slot once
per full interval, and what the urgent save kept (the fired series' hold) is what a next owner restores.
Driven first with the plan's simulated pass times, then by the worker's own periodic passes.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from datetime import datetime

import asyncpg
import nats
import numpy as np
import pytest

from analytics.numeric import kernel
from analytics.numeric.device_state import restore_devices
from analytics.numeric.monitor import NumericMonitor
from analytics.numeric.save_tiers import SavePlan
from ioc.partition.stream import Publisher, Row, ensure_stream
from ioc.partition.worker import PartitionWorker, state_name
from storage.writes import load_series_states
from tests.integration.test_partitioned_analytics import NATS_URL, until

pytestmark = pytest.mark.integration

T0 = 1_796_000_000.0
STEP = 300.0  # a reading every 5 minutes
WARM = 864  # three days: the detectors are warm


async def test_worker_saves_a_fired_device_at_once_and_a_quiet_one_at_its_slot(database_url: str) -> None:
    stream = f"T{uuid.uuid4().hex[:10]}"
    tag = uuid.uuid4().hex[:6]
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, max_age_s=600)
    pub = Publisher(js, 1, stream)
    # state_every_s: no periodic pass of its own until the second part
    worker = PartitionWorker(database_url, NATS_URL, 1, "tiers", rebalance_s=0.3, stream=stream,
                             state_every_s=3600.0, full_every_s=300.0)
    run = asyncio.create_task(worker.run())
    conn = await asyncpg.connect(database_url)
    scope = state_name(stream, 0)
    rng = np.random.default_rng(5)

    def row(dev: str, i: int, value: float | None = None) -> Row:
        return Row(dev, "bts", "D1", "temperature_c", T0 + STEP * i,
                   40.0 + rng.normal(0, 0.5) if value is None else value)

    async def send(rows: list[Row]) -> None:
        target = worker.processed + len(rows)
        await pub.publish(rows)
        await until(lambda: worker.processed >= target, 30, "the readings analysed")

    async def saved() -> dict[str, datetime]:
        return {r["device_id"]: r["updated_at"] for r in await conn.fetch(
            "SELECT device_id, updated_at FROM series_state WHERE scope = $1", scope)}

    try:
        await until(lambda: 0 in worker.plans, 20, "the worker takes the partition")
        epoch, monitor, plan = worker.epochs[0], worker.monitors[0], worker.plans[0]
        # the quiet device's slot falls well inside the interval, not in the first pass
        quiet = next(d for i in range(100) if 60.0 < plan.next_slot(d := f"q{tag}-{i}", 0.0) < 240.0)
        loud = f"l{tag}"
        others = [f"c{tag}-{i}" for i in range(8)]  # spiked in the second part
        devices = [quiet, loud, *others]
        for start in range(0, WARM, 108):
            await send([row(d, i) for i in range(start, start + 108) for d in devices])
        assert worker.findings == 0, "quiet learning raised nothing"
        await worker._save(0, epoch, monitor)  # everything, as at a hand-over
        await worker._save(0, epoch, monitor, now=0.0)  # the plan's first pass
        before = await saved()
        assert set(devices) <= set(before)

        await send([row(quiet, WARM), row(loud, WARM, 90.0)])
        assert worker.findings >= 1, "the spike raises a finding"
        await worker._save(0, epoch, monitor, now=15.0)
        after = await saved()
        assert after[loud] > before[loud], "saved at the next pass"
        assert after[quiet] == before[quiet], "quiet learning waits for the device's slot"

        slot = plan.next_slot(quiet, 0.0)
        writes = []
        for k in range(2, int((slot + 300.0) // 15.0) + 2):  # a pass every 15 s past the next slot
            await send([row(quiet, WARM + k)])
            await worker._save(0, epoch, monitor, now=15.0 * k)
            now = (await saved())[quiet]
            if now > before[quiet]:
                writes.append(15.0 * k)
                before[quiet] = now
        assert writes == [15.0 * math.ceil(slot / 15.0), 15.0 * math.ceil((slot + 300.0) / 15.0)], (writes, slot)

        # a next owner restores the fired series' hold from the urgent save
        restored = NumericMonitor()
        restore_devices(restored, await load_series_states(conn, scope))
        ra, rb = monitor.table.keys[(loud, "temperature_c")], restored.table.keys[(loud, "temperature_c")]
        for col in (kernel.HOLD, kernel.ALERT, kernel.N):
            assert monitor.bank.F[ra, col] == restored.bank.F[rb, col]
        assert restored.bank.F[rb, kernel.N] < restored.bank.F[rb, kernel.HOLD]

        # the worker's own passes: every 0.5 s, quiet devices due once per 6 s
        worker.plans[0] = plan = SavePlan(6.0)
        worker.state_every_s = 0.5
        n = WARM + 100
        quiet_saves: list[datetime] = []
        last = (await saved())[quiet]
        t_end = time.monotonic() + 13.0
        spiked: tuple[str, float, float] | None = None
        fired_saved_after: float | None = None
        while time.monotonic() < t_end:
            n += 1
            await pub.publish([row(quiet, n)])
            if spiked is None and time.monotonic() > t_end - 11.0:
                now_m = time.monotonic()
                # a device whose own slot is far off: saved soon only because it fired
                dev = next((d for d in others if plan.next_slot(d, now_m) - now_m > 4.5), None)
                if dev is not None:
                    await pub.publish([row(dev, n, 90.0)])
                    spiked = (dev, now_m, plan.next_slot(dev, now_m))
                    others.remove(dev)
            await asyncio.sleep(0.1)
            rows = await saved()
            if rows[quiet] > last:
                quiet_saves.append(rows[quiet])
                last = rows[quiet]
            if spiked is not None and fired_saved_after is None and rows[spiked[0]] > before[spiked[0]]:
                fired_saved_after = time.monotonic() - spiked[1]
        assert spiked is not None, "a device with its slot far off"
        assert fired_saved_after is not None and fired_saved_after < 3.0, fired_saved_after
        assert spiked[1] + fired_saved_after < spiked[2], "saved before its slot: as urgent"
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(quiet_saves)]
        # learning every 0.1-0.2 s and passes every 0.5 s: about 26 saves in the single tier
        assert 1 <= len(quiet_saves) <= 3 and all(g > 4.5 for g in gaps), (quiet_saves, gaps)
    finally:
        worker.stop()
        await asyncio.gather(run, return_exceptions=True)
        await conn.execute("DELETE FROM series_state WHERE scope = $1", scope)
        await conn.close()
        await js.delete_stream(stream)
        await nc.close()
