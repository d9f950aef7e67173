"""Every reading of the partitioned stream is learned exactly once, whatever fails where (real NATS JetStream and
PostgreSQL, no mocks).

* The worker's database connection is terminated (``pg_terminate_backend``, from a trigger on ``findings``) at
  the commit of a batch's findings, after its detectors ran over the batch and before its acks. The consumer
  ended, the partition was given back with its state saved, batch included, and the batch came back after the
  ack wait and was learned a second time (and the finding it raised was never stored nor sent).
* A worker SIGKILLed before its first periodic save: what it had learned and acknowledged went with it (its
  devices were restored by nobody). The next owner replays from the saved position.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

from analytics.numeric import kernel
from analytics.numeric.device_state import restore_devices
from analytics.numeric.monitor import NumericMonitor
from ioc.partition.findings import decode_findings, findings_subject
from ioc.partition.stream import Publisher, Row, ensure_stream
from ioc.partition.worker import PartitionWorker, lease_name, state_name
from storage.writes import load_series_states
from tests.conftest import ingest_env, own_database
from tests.integration.test_partitioned_analytics import NATS_URL, until_async

pytestmark = pytest.mark.integration

T0 = 1_796_000_000.0


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """Its own database: a trigger here terminates connections that write findings."""
    yield from own_database()


def _step(step: int, devices: int, mains: str | None = "M1") -> list[Row]:
    ts = T0 + 60 * step
    rows = [Row(f"S{d}", "bts", "D1", "temperature_c", ts, 30.0 + (d % 7) + 0.1 * (step % 5)) for d in range(devices)]
    if mains:  # one BTS on mains, then on battery from step 40: one mains_power_lost finding
        rows += [Row(mains, "bts", "D1", "mains_power", ts, 1.0 if step < 40 else 0.0),
                 Row(mains, "bts", "D1", "battery_pct", ts, 100.0 - max(0, step - 40))]
    return rows


async def _learned(conn: asyncpg.Connection, stream: str, metric: str = "temperature_c") -> dict[str, int]:
    """Readings each saved series has learned (its count), for the devices S*."""
    monitor = NumericMonitor()
    restore_devices(monitor, await load_series_states(conn, state_name(stream, 0)))
    return {dev: int(monitor.bank.F[row, kernel.N]) for (dev, m), row in monitor.table.keys.items()
            if m == metric and dev.startswith("S")}


async def _settled(js: Any, stream: str) -> bool:
    with contextlib.suppress(Exception):
        info = await js.consumer_info(stream, f"{stream}-analytics-p0")
        return not info.num_pending and not info.num_ack_pending
    return False


async def _published_findings(js: Any, stream: str) -> list[Any]:
    sub = await js.pull_subscribe(findings_subject(stream), stream=stream)
    out: list[Any] = []
    with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
        while True:
            for m in await sub.fetch(100, timeout=0.5):
                out += decode_findings(m.data)
    await sub.unsubscribe()
    return out


async def test_a_connection_lost_at_the_findings_commit_learns_the_batch_once(database_url: str) -> None:
    steps, devices = 60, 50
    stream = f"X{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, max_age_s=600)
    pub = Publisher(js, 1, stream)
    conn = await asyncpg.connect(database_url)
    # the first statement that stores findings ends its own connection (a real lost connection, mid-transaction)
    await conn.execute("""
        CREATE SEQUENCE IF NOT EXISTS inject_seq;
        CREATE OR REPLACE FUNCTION inject_kill() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF nextval('inject_seq') = 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5);
          END IF;
          RETURN NULL;
        END $$;
        DROP TRIGGER IF EXISTS inject ON findings;
        CREATE TRIGGER inject BEFORE INSERT ON findings FOR EACH STATEMENT EXECUTE FUNCTION inject_kill();""")
    worker = PartitionWorker(database_url, NATS_URL, 1, "eo", rebalance_s=0.3, stream=stream)
    run = asyncio.create_task(worker.run())
    started = time.monotonic()
    try:
        await until_async(lambda: _const(0 in worker.tasks), 20, "the worker takes the partition")
        for step in range(30):
            await pub.publish(_step(step, devices), msg_id=f"s{step}")
        await until_async(lambda: _const(worker.processed >= 30 * (devices + 2)), 20, "the first half analysed")
        for step in range(30, steps):
            await pub.publish(_step(step, devices), msg_id=f"s{step}")
        await until_async(lambda: _settled(js, stream), 25, "every message acknowledged")
        assert await conn.fetchval("SELECT last_value FROM inject_seq") >= 1, "the failure was injected"
        worker.stop()
        await asyncio.wait_for(run, 20)
        learned = await _learned(conn, stream)
        stored = await conn.fetch("SELECT device_id, type FROM findings WHERE device_id = 'M1'")
        sent = [f for f in await _published_findings(js, stream) if f.device_id == "M1"]
        print(f"connection lost at the findings commit: {time.monotonic() - started:.1f} s; "
              f"counts {sorted(set(learned.values()))}, {len(stored)} stored, {len(sent)} published")
        assert len(learned) == devices
        wrong = {d: n for d, n in learned.items() if n != steps}
        # before: every series of the failed batch counted it twice (e.g. 90 or 120 of 60)
        assert not wrong, f"{len(wrong)} series learned a wrong count: {sorted(set(wrong.values()))}"
        # before: the saved state already held the finding's episode; the replay never raised it: 0 and 0
        assert [r["type"] for r in stored] == ["mains_power_lost"]
        assert [f.type for f in sent] == ["mains_power_lost"]
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, 20)
        await conn.close()
        await js.delete_stream(stream)
        await nc.close()


async def _const(value: bool) -> bool:
    return value


def _start(database_url: str, stream: str, wid: str, log: Path) -> subprocess.Popen[bytes]:
    env = ingest_env(database_url, 1883, IOC_PARTITION__NATS_URL=NATS_URL, IOC_PARTITION__STREAM=stream,
                     IOC_PARTITION__PARTITIONS="1", IOC_PARTITION__REBALANCE_S="0.3",
                     IOC_PARTITION__LEASE_TTL_S="2")
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ioc.cli", "analytics-worker", "--id", wid], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


async def test_a_worker_killed_before_its_first_save_is_replayed_by_the_next(database_url: str,
                                                                             tmp_path: Path) -> None:
    """SIGKILL after the worker acknowledged its readings, before any periodic save: the next owner learns each
    reading once (before: the killed worker's devices were restored by nobody, their learning lost)."""
    steps, devices = 60, 50
    stream = f"K{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, max_age_s=600)
    pub = Publisher(js, 1, stream)
    conn = await asyncpg.connect(database_url)
    first = _start(database_url, stream, "killed", tmp_path / "killed.log")
    second = None
    try:
        await until_async(lambda: _const_held(conn, stream), 20, "the first worker takes the partition")
        for step in range(steps):
            await pub.publish(_step(step, devices, "M2"), msg_id=f"s{step}")
        await until_async(lambda: _settled(js, stream), 20, "every message acknowledged")
        os.kill(first.pid, signal.SIGKILL)  # before its first periodic save (15 s)
        first.wait(10)
        second = _start(database_url, stream, "next", tmp_path / "next.log")
        await until_async(lambda: _held_by(conn, stream, "next"), 20, "the next worker takes the partition")
        for _ in range(2):  # its replay (if any) starts after the take
            await asyncio.sleep(1.0)
            await until_async(lambda: _settled(js, stream), 20, "the next worker caught up")
        second.send_signal(signal.SIGTERM)
        second.wait(20)
        learned = await _learned(conn, stream)
        rows = await conn.fetch("SELECT ts, type, created_at FROM findings WHERE device_id = $1", "M2")
        print([tuple(r) for r in rows])
        stored = len(rows)
        sent = [f for f in await _published_findings(js, stream) if f.device_id == "M2"]
        print(f"SIGKILL before the first save: counts {sorted(set(learned.values()))}, {stored} stored, "
              f"{len(sent)} published")
        assert len(learned) == devices and set(learned.values()) == {steps}
        assert stored == 1 and len(sent) == 1, "the replay raised no second mains_power_lost"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        await conn.close()
        await js.delete_stream(stream)
        await nc.close()


async def _const_held(conn: asyncpg.Connection, stream: str) -> bool:
    return bool(await conn.fetchval("SELECT holder IS NOT NULL AND expires_at > now() FROM cluster_lease "
                                    "WHERE name = $1", lease_name(stream, 0)))


async def _held_by(conn: asyncpg.Connection, stream: str, wid: str) -> bool:
    holder = await conn.fetchval("SELECT holder FROM cluster_lease WHERE name = $1 AND expires_at > now()",
                                 lease_name(stream, 0))
    return bool(holder and holder.startswith(f"{wid}-"))
