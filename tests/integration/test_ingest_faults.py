"""Crash and outage tests: nothing the broker accepted is lost, nothing is stored twice.

Both use a private Mosquitto with the project's queue limits (an offline persistent session must be
able to queue more than the stock 1,000 messages); the outage test also uses a private PostgreSQL
cluster that it stops for 20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import create_database, ingest_env
from tests.support.mqtt import Publisher, iso, unique_id
from tests.support.services import IngestProcess, private_mosquitto, private_postgres, wait_until

pytestmark = pytest.mark.integration


async def count_rows(dsn: str, device_prefix: str) -> tuple[int, int]:
    """(rows, distinct seq) of telemetry for devices starting with ``device_prefix``."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT (device_id, seq)) AS d FROM telemetry "
                                  "WHERE device_id LIKE $1 || '%'", device_prefix)
        return int(row["n"]), int(row["d"])
    finally:
        await conn.close()


def publish_stream(port: int, prefix: str, total: int, rate: float, devices: int = 50) -> Publisher:
    """Publish ``total`` QoS 1 readings at about ``rate`` msg/s; returns once the broker acked them all."""
    pub = Publisher(port)
    t0 = time.time() - 120
    start = time.monotonic()
    for i in range(total):
        dev = f"{prefix}-{i % devices}"
        pub.publish(f"ioc/v1/traffic/{dev}/telemetry",
                    {"ts": iso(t0 + i / 1000), "seq": i, "metrics": {"flow_veh_h": float(i)}})
        ahead = i / rate - (time.monotonic() - start)
        if ahead > 0.005:
            time.sleep(ahead)
    pub.wait_all(120)
    return pub


def wait_subscribed(port: int, dsn: str) -> None:
    """Publish probe readings until one is stored: the worker is connected, subscribed and committing."""
    probe = unique_id("probe")
    pub = Publisher(port)
    i = 0

    def stored() -> bool:
        nonlocal i
        i += 1
        pub.publish(f"ioc/v1/bts/{probe}/telemetry", {"ts": iso(time.time() - 1), "seq": i, "metrics": {"x": 1}})
        return asyncio.run(count_rows(dsn, probe))[0] > 0

    wait_until(stored, 60, 0.2, what="worker subscribed")
    pub.close()


def test_sigkill_mid_stream_loses_nothing_and_stores_once(database_url: str, artifacts: Path) -> None:
    total = 20_000
    prefix = unique_id("K")
    with contextlib.ExitStack() as stack:
        port = stack.enter_context(private_mosquitto())
        worker = IngestProcess(ingest_env(database_url, port), f"kill-{uuid.uuid4().hex[:6]}",
                               artifacts / "ingest.log")
        stack.enter_context(worker)
        wait_subscribed(port, database_url)

        result: dict[str, Publisher] = {}
        thread = threading.Thread(target=lambda: result.setdefault("pub", publish_stream(port, prefix, total, 4000)))
        thread.start()
        wait_until(lambda: asyncio.run(count_rows(database_url, prefix + "-"))[0] >= total // 4, 60, 0.01,
                   what="a quarter committed")
        worker.kill()  # SIGKILL: no drain, no goodbye; unacked messages stay with the broker
        killed_at = asyncio.run(count_rows(database_url, prefix + "-"))[0]
        time.sleep(1.0)  # messages keep arriving at the broker while the worker is dead
        worker.start()
        thread.join(180)
        result["pub"].close()
        wait_until(lambda: asyncio.run(count_rows(database_url, prefix + "-"))[0] >= total, 120, 0.2,
                   what="all rows")
        time.sleep(1.0)  # let any redelivered duplicate arrive before counting
        rows, distinct = asyncio.run(count_rows(database_url, prefix + "-"))
    assert total // 4 <= killed_at < total, "the kill must land mid-stream"
    assert (rows, distinct) == (total, total)


def test_postgres_down_for_20s_loses_nothing(artifacts: Path) -> None:
    total = 8_000
    prefix = unique_id("P")
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(private_postgres())
        port = stack.enter_context(private_mosquitto())
        dsn = asyncio.run(create_database(pg.dsn))
        worker = IngestProcess(ingest_env(dsn, port, IOC_INGEST__MAX_PENDING_MESSAGES="2000"),
                               f"pgdown-{uuid.uuid4().hex[:6]}", artifacts / "ingest.log")
        stack.enter_context(worker)
        wait_subscribed(port, dsn)
        result: dict[str, Publisher] = {}
        thread = threading.Thread(target=lambda: result.setdefault("pub", publish_stream(port, prefix, total, 250)))
        thread.start()
        wait_until(lambda: asyncio.run(count_rows(dsn, prefix))[0] >= 500, 60, 0.05, what="first rows")
        pg.stop()
        time.sleep(20)
        assert worker.alive(), "the worker must survive the outage"
        pg.start()
        thread.join(120)
        result["pub"].close()
        wait_until(lambda: asyncio.run(count_rows(dsn, prefix))[0] >= total, 120, 0.2, what="all rows")
        rows, distinct = asyncio.run(count_rows(dsn, prefix))
        worker.stop()  # flushes its log before we read it
        log = (artifacts / "ingest.log").read_text()
    assert (rows, distinct) == (total, total)
    assert "not committed" in log and "paused" in log  # it retried, and back-pressure held the bound
