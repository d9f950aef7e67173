"""A commit failure that is not about the data never quarantines a good message while PostgreSQL is away.

Seen in test_cluster_province: PostgreSQL stopped (``pg_ctl -m fast``) while a worker was in a COPY; the broken
connection left asyncpg's protocol in a state it reported as ``InternalClientError: cannot switch to state 15;
another operation (2) is in progress`` (no database error, no OSError), and the worker quarantined that message
as poison. Here an in-process worker (private Mosquitto, private PostgreSQL) gets such errors injected into
its write function; the database is real, and really stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

import ingest.worker as worker_module
from ingest.config import IngestConfig
from ingest.contract import SUBSCRIPTION
from ingest.errors import UNKNOWN_ERROR_RETRIES
from ingest.mqtt_session import SessionOptions
from ingest.worker import IngestWorker
from storage.config import StorageConfig
from storage.writes import BatchRows, write_batch
from tests.conftest import create_database
from tests.support.mqtt import Publisher, iso, unique_id
from tests.support.services import PrivatePostgres, private_mosquitto, private_postgres

pytestmark = pytest.mark.integration

_BROKEN_COPY = "cannot switch to state 15; another operation (2) is in progress"


class BrokenProtocolError(Exception):
    """A client-side error no classifier knows (on its own it is classed permanent at once)."""


def _internal_client_error() -> Exception:
    return asyncpg.exceptions.InternalClientError(_BROKEN_COPY)


def _unknown_client_error() -> Exception:
    return BrokenProtocolError(f"protocol left mid-COPY: {_BROKEN_COPY}")


class FaultyWrites:
    """Wraps the worker's ``write_batch``: a batch holding ``device``'s readings fails while ``failing``.

    With ``stop`` set, the first such write first stops PostgreSQL (and waits until it is down), then fails:
    the error arrives while the database is unreachable, as in the cluster run.
    """

    def __init__(self, device: str, make_error: Callable[[], Exception], stop: PrivatePostgres | None) -> None:
        self.device, self.make_error, self.stop = device, make_error, stop
        self.failing = True
        self.calls = 0
        self.failed_connections: list[Any] = []
        self.failed = asyncio.Event()

    async def __call__(self, conn: Any, rows: BatchRows, method: Any = "copy") -> None:
        if self.failing and any(row[1] == self.device for row in rows.telemetry):
            self.calls += 1
            self.failed_connections.append(conn._con)  # the pool's connection behind the proxy
            if self.stop is not None and self.calls == 1:
                await asyncio.to_thread(self.stop.stop)
            self.failed.set()
            raise self.make_error()
        await write_batch(conn, rows, method)


@contextlib.asynccontextmanager
async def running_worker(dsn: str, mqtt_port: int) -> AsyncIterator[IngestWorker]:
    session = SessionOptions(host="127.0.0.1", port=mqtt_port, client_id=unique_id("faulty"),
                             subscriptions=(SUBSCRIPTION,), session_expiry_s=300,
                             reconnect_min_s=0.2, reconnect_max_s=1.0)
    config = IngestConfig(writers=2, batch_max_delay_ms=10, retry_min_s=0.1, retry_max_s=0.5)
    worker = IngestWorker(dsn, session, config, StorageConfig(), maintenance_interval_s=None)
    task = asyncio.create_task(worker.run(), name="faulty-ingest")
    try:
        await asyncio.wait_for(worker.ready.wait(), 30)
        await worker.session.wait_connected(30)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


def publish(port: int, device: str, seq: int) -> None:
    pub = Publisher(port)
    try:
        pub.publish(f"ioc/v1/traffic/{device}/telemetry",
                    {"ts": iso(time.time() - 1), "seq": seq, "metrics": {"flow_veh_h": 10.0 + seq, "speed_kmh": 42.0}})
        pub.wait_all(10)
    finally:
        pub.close()


async def stored(dsn: str, device: str) -> tuple[int, int]:
    """(telemetry rows of ``device``, quarantine rows of the whole database)."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        rows = await conn.fetchval("SELECT count(*) FROM telemetry WHERE device_id = $1", device)
        quarantined = await conn.fetchval("SELECT count(*) FROM quarantine")
        return int(rows), int(quarantined)
    finally:
        await conn.close()


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("make_error", [_internal_client_error, _unknown_client_error],
                         ids=["internal-client-error", "unknown-client-error"])
async def test_a_client_error_while_postgres_is_stopped_is_retried_until_it_is_back(
        make_error: Callable[[], Exception], monkeypatch: pytest.MonkeyPatch) -> None:
    device = unique_id("pgstop")
    with private_postgres() as pg, private_mosquitto() as port:
        dsn = await create_database(pg.dsn)
        faults = FaultyWrites(device, make_error, stop=pg)
        monkeypatch.setattr(worker_module, "write_batch", faults)
        async with running_worker(dsn, port) as worker:
            await asyncio.to_thread(publish, port, device, 1)
            await asyncio.wait_for(faults.failed.wait(), 30)  # PostgreSQL is stopped, the commit failed
            await asyncio.sleep(3.0)  # the worker retries against a stopped database meanwhile
            assert worker._pending == 1, "the message is held unacknowledged while the database is away"
            faults.failing = False
            await asyncio.to_thread(pg.start)

            async def readings_stored() -> bool:
                return (await stored(dsn, device))[0] == 2

            await eventually(readings_stored, 30, "the message's readings stored")
            await eventually(lambda: asyncio.sleep(0, worker._pending == 0), 10, "the message acknowledged")
        assert await stored(dsn, device) == (2, 0), "both readings stored, nothing quarantined"
        assert all(conn.is_closed() for conn in faults.failed_connections)


@pytest.mark.parametrize(("make_error", "tries"), [(_internal_client_error, UNKNOWN_ERROR_RETRIES + 1),
                                                   (_unknown_client_error, 1)],
                         ids=["internal-client-error", "unknown-client-error"])
async def test_a_client_error_while_postgres_answers_is_quarantined_after_its_retries(
        make_error: Callable[[], Exception], tries: int, monkeypatch: pytest.MonkeyPatch) -> None:
    poison, good = unique_id("poison"), unique_id("good")
    with private_postgres() as pg, private_mosquitto() as port:
        dsn = await create_database(pg.dsn)
        faults = FaultyWrites(poison, make_error, stop=None)
        monkeypatch.setattr(worker_module, "write_batch", faults)
        async with running_worker(dsn, port) as worker:
            await asyncio.to_thread(publish, port, poison, 1)

            async def quarantined() -> bool:
                return (await stored(dsn, poison))[1] == 1

            await eventually(quarantined, 30, "the poison message quarantined")
            await asyncio.to_thread(publish, port, good, 1)  # the worker goes on

            async def good_stored() -> bool:
                return (await stored(dsn, good))[0] == 2

            await eventually(good_stored, 30, "a good message after it stored")
            await eventually(lambda: asyncio.sleep(0, worker._pending == 0), 10, "both acknowledged")
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow("SELECT topic, reason, detail FROM quarantine")
        finally:
            await conn.close()
        assert await stored(dsn, poison) == (0, 1)
        assert faults.calls == tries, "retried while the database answers, then quarantined"
        assert row["topic"] == "(message on telemetry)" and row["reason"] == "internal_error"
        assert type(make_error()).__name__ in row["detail"] and _BROKEN_COPY in row["detail"]
        assert len(faults.failed_connections) == tries
        assert all(c.is_closed() for c in faults.failed_connections), "no broken connection goes back to the pool"
