"""The brain acks a partition worker's finding (NATS JetStream) only once the alert step covering it is stored.

Real NATS (127.0.0.1:4222) and PostgreSQL. In this process: an alert stage and the findings consumer wired as a
leader wires them (``tie_findings``); a leader "killed" sends nothing more (its connection is cut before its
tasks stop), as a SIGKILL leaves it. Then the real ``ioc serve --role brain`` SIGKILLed with findings handed
over and not stepped. Every time, each finding becomes its alert exactly once, and every message ends acked.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest

from analytics.findings import Finding
from ioc.alerts.config import AlertsConfig
from ioc.alerts.stage import AlertStage
from ioc.cluster.ids import IdReserve
from ioc.geo import City
from ioc.live.hub import LiveHub
from ioc.partition.findings import FindingsInput, encode_findings, findings_subject, tie_findings
from ioc.partition.stream import ensure_stream
from storage.config import StorageConfig
from storage.db import create_pool
from tests.conftest import own_database
from tests.support.auth import make_token_sync
from tests.support.cluster import RoleProcess, cluster_env, db_fetch, unique_lease, wait_for
from tests.support.tasks import cancel_and_wait, until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """This module's own database: its tests leave hundreds of open alerts that later tests' incidents would join
    (test_alerts_flow's district outage then found more than its six members)."""
    yield from own_database()

NATS_URL = "nats://127.0.0.1:4222"


def mains_lost(device: str) -> Finding:
    return Finding(device, "mains_power", datetime.now(UTC), "mains_power_lost", 1.0, "on battery", {})


class Leader:
    """An alert stage and the findings consumer on their own NATS connection, as one leader runs them."""

    def __init__(self, pool: Any, city: City, stream: str, store: bool = True, step: bool = True,
                 ack_wait_s: float = 2.0) -> None:
        self.stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig(tick_s=0.2))
        self.stage.ids = IdReserve()  # ids from the sequences, as the brain draws them
        self.stage.engine.id_source = self.stage.ids
        self.store, self.step, self.ack_wait_s = store, step, ack_wait_s

        async def guard(conn: Any, changes: Any) -> None:
            if not self.store:
                raise OSError("the database is away")  # transient: the stage keeps the changes and retries

        self.stage.guard = guard
        self.stream = stream
        self.handed: list[Finding] = []
        self.nc: Any = None
        self.input: FindingsInput | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def _deliver(self, findings: list[Finding]) -> None:
        self.stage.on_findings(findings)
        self.handed += findings

    async def start(self) -> None:
        self.nc = await nats.connect(NATS_URL)
        self.input = tie_findings(FindingsInput(self.nc.jetstream(), self.stream, self._deliver,
                                                        ack_wait_s=self.ack_wait_s),
                                  self.stage)
        self.tasks = [asyncio.create_task(self.input.run())]
        if self.step:
            self.start_steps()

    def start_steps(self) -> None:
        self.tasks.append(asyncio.create_task(self.stage.run()))

    def keys(self) -> set[str]:
        return {a.device_id or "" for a in self.stage.engine.by_key.values()}

    async def stop(self) -> None:
        """A leader stopping (lease lost, or shutting down): its tasks are cancelled, the connection still up."""
        await cancel_and_wait(self.tasks)
        await self.nc.close()

    async def kill(self) -> None:
        """What a SIGKILL leaves: nothing more sent (no ack, no nak), the stream keeps what was not acked."""
        await self.nc.close()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def consumer(js: Any, stream: str) -> tuple[int, int]:
    """(messages delivered and not acked, stream sequence every message up to which is acked)."""
    info = await js.consumer_info(stream, f"{stream}-brain-findings")
    return info.num_ack_pending, info.ack_floor.stream_seq


async def all_acked(js: Any, stream: str, sent: int, timeout: float) -> None:
    """Wait until the brain's consumer has acked every message up to ``sent`` and holds none pending."""
    deadline = time.monotonic() + timeout
    while await consumer(js, stream) != (0, sent):
        assert time.monotonic() < deadline, await consumer(js, stream)
        await asyncio.sleep(0.1)


async def close_all(leaders: list[Any], js: Any, stream: str, nc: Any, pool: Any) -> None:
    """Teardown: kill every leader still running, then the stream, the NATS connection and the pool."""
    for leader in leaders:
        if leader.tasks and not all(t.done() for t in leader.tasks):
            await leader.kill()
    await js.delete_stream(stream)
    await nc.close()
    await pool.close()


async def alerts_per_device(pool: Any, devices: list[str]) -> dict[str, int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT device_id, count(*) AS n FROM alerts WHERE device_id = ANY($1) "
                                "GROUP BY device_id", devices)
    return {r["device_id"]: r["n"] for r in rows}


async def publish(js: Any, stream: str, devices: list[str], per_message: int) -> int:
    sent = 0
    for k in range(0, len(devices), per_message):
        await js.publish(findings_subject(stream), encode_findings([mains_lost(d) for d in
                                                                    devices[k:k + per_message]]), stream=stream)
        sent += 1
    return sent


async def _setup(database_url: str) -> tuple[Any, Any, str, Any]:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    stream = f"T{uuid.uuid4().hex[:10]}"
    await ensure_stream(js, stream, max_age_s=600)
    pool = await create_pool(database_url, StorageConfig(), max_size=6)
    return nc, js, stream, pool


async def test_a_finding_is_acked_only_once_its_alert_is_stored(database_url: str) -> None:
    """The store fails: findings applied, never acked (kept past ack_wait); the leader dies; the next one gets
    them again, stores one alert each and acks them all; a third one gets nothing."""
    nc, js, stream, pool = await _setup(database_url)
    city = City.load()
    devices = [f"BTS-fa-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    leaders: list[Leader] = []
    try:
        sent = await publish(js, stream, devices, per_message=2)
        first = Leader(pool, city, stream, store=False)
        leaders.append(first)
        await first.start()
        await until(lambda: set(devices) <= first.keys(), 30, "the findings applied by the first engine")
        await asyncio.sleep(4.0)  # twice ack_wait: in_progress keeps them this leader's, unacked
        assert first.stage.stored_seq == 0
        assert await consumer(js, stream) == (sent, 0)
        assert (await js.consumer_info(stream, f"{stream}-brain-findings")).num_redelivered == 0
        assert await alerts_per_device(pool, devices) == {}
        await first.kill()

        second = Leader(pool, city, stream)
        leaders.append(second)
        await second.start()
        await until(lambda: set(devices) <= second.keys(), 30, "the findings delivered again to the next leader")
        await all_acked(js, stream, sent, 30)
        assert await alerts_per_device(pool, devices) == dict.fromkeys(devices, 1)
        await second.kill()

        third = Leader(pool, city, stream)
        leaders.append(third)
        await third.start()
        await asyncio.sleep(3.0)
        assert third.handed == []
        await third.kill()
    finally:
        await close_all(leaders, js, stream, nc, pool)


async def test_a_finding_stored_but_not_acked_is_not_alerted_twice(database_url: str) -> None:
    """Killed between the store and the ack: the next leader gets the findings again; still one alert each."""
    nc, js, stream, pool = await _setup(database_url)
    city = City.load()
    devices = [f"BTS-fd-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    leaders: list[Leader] = []
    try:
        sent = await publish(js, stream, devices, per_message=3)
        first = Leader(pool, city, stream)
        leaders.append(first)
        await first.start()
        assert first.input is not None
        first.input.settled = lambda: 0  # the acks never go out
        wait = time.monotonic() + 30
        while await alerts_per_device(pool, devices) != dict.fromkeys(devices, 1):
            assert time.monotonic() < wait, "the first leader's alerts stored"
            await asyncio.sleep(0.1)
        assert await consumer(js, stream) == (sent, 0)
        await first.kill()

        second = Leader(pool, city, stream)
        leaders.append(second)
        await second.start()
        await until(lambda: len(second.handed) == len(devices), 30, "the findings delivered again")
        await all_acked(js, stream, sent, 30)
        await asyncio.sleep(1.0)  # a step or two more
        assert await alerts_per_device(pool, devices) == dict.fromkeys(devices, 1)
        await second.kill()
    finally:
        await close_all(leaders, js, stream, nc, pool)


async def test_a_stopping_leader_gives_back_what_it_has_not_stored(database_url: str) -> None:
    """Stopped with its step not stored: the findings go back to the stream at once (not after ack_wait), and
    the next leader stores one alert each."""
    nc, js, stream, pool = await _setup(database_url)
    city = City.load()
    devices = [f"BTS-fs-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    leaders: list[Leader] = []
    try:
        sent = await publish(js, stream, devices, per_message=2)
        first = Leader(pool, city, stream, store=False, ack_wait_s=60.0)
        leaders.append(first)
        await first.start()
        await until(lambda: set(devices) <= first.keys(), 30, "the findings applied by the first engine")
        await first.stop()
        second = Leader(pool, city, stream, ack_wait_s=60.0)
        leaders.append(second)
        await second.start()
        await until(lambda: len(second.handed) == len(devices), 10, "the findings given back, at once")
        await all_acked(js, stream, sent, 30)
        assert await alerts_per_device(pool, devices) == dict.fromkeys(devices, 1)
        await second.stop()
    finally:
        await close_all(leaders, js, stream, nc, pool)


async def test_a_full_stage_stops_the_fetching_instead_of_dropping(database_url: str) -> None:
    """No step runs (signals pile up) with small bounds: the consumer stops at the hold, nothing is dropped or
    acked; once steps run, every finding becomes its alert and every message is acked."""
    nc, js, stream, pool = await _setup(database_url)
    city = City.load()
    devices = [f"BTS-fb-{uuid.uuid4().hex[:8]}" for _ in range(40)]
    leader = Leader(pool, city, stream, step=False)
    leader.stage.hold_signals, leader.stage.max_signals = 4, 8
    try:
        sent = await publish(js, stream, devices, per_message=1)
        await leader.start()
        await until(lambda: len(leader.handed) >= 4, 30, "findings up to the hold")
        await asyncio.sleep(3.0)  # past ack_wait: the fetched and the handed are kept ours
        assert len(leader.handed) == 4 and leader.stage.dropped == 0
        assert (await consumer(js, stream))[1] == 0
        leader.start_steps()
        await all_acked(js, stream, sent, 60)
        wait = time.monotonic() + 30
        while await alerts_per_device(pool, devices) != dict.fromkeys(devices, 1):
            assert time.monotonic() < wait, "every finding's alert stored"
            await asyncio.sleep(0.1)
        assert leader.stage.dropped == 0
        assert sorted(f.device_id for f in leader.handed) == sorted(devices)
    finally:
        await leader.kill()
        await js.delete_stream(stream)
        await nc.close()
        await pool.close()


def test_a_brain_sigkilled_after_the_handover_loses_no_finding(database_url: str, mqtt_port: int,
                                                                artifacts: Path) -> None:
    """`ioc serve --role brain` is handed the findings but never steps (a long tick); SIGKILL; the next brain
    takes the lease, gets them again from the stream and alerts each device exactly once."""
    stream = f"T{uuid.uuid4().hex[:10]}"
    devices = [f"BTS-fk-{uuid.uuid4().hex[:8]}" for _ in range(12)]

    async def prepare() -> int:
        nc = await nats.connect(NATS_URL)
        try:
            js = nc.jetstream()
            await ensure_stream(js, stream, max_age_s=600)
            return await publish(js, stream, devices, per_message=3)
        finally:
            await nc.close()

    async def state() -> tuple[int, int]:
        nc = await nats.connect(NATS_URL)
        try:
            return await consumer(nc.jetstream(), stream)
        except Exception:  # the brain has not created its consumer yet
            return -1, -1
        finally:
            await nc.close()

    async def drop() -> None:
        nc = await nats.connect(NATS_URL)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    sent = asyncio.run(prepare())
    name = unique_lease()
    partition = {"IOC_PARTITION__NATS_URL": NATS_URL, "IOC_PARTITION__STREAM": stream}
    token = make_token_sync(database_url, "admin", f"fk-{name}")
    first = RoleProcess(cluster_env(database_url, mqtt_port, name, IOC_ALERTS__TICK_S="3600", **partition),
                        "brain", artifacts / "brain-fk-1.log", token)
    second = RoleProcess(cluster_env(database_url, mqtt_port, name, **partition), "brain",
                         artifacts / "brain-fk-2.log", token)
    query = "SELECT device_id, count(*) AS n FROM alerts WHERE device_id = ANY($1) GROUP BY device_id"
    try:
        first.start()
        wait_for(lambda: asyncio.run(state()) == (sent, 0), 60, what="the findings handed over, none acked")
        time.sleep(3.0)  # several ack passes: still none acked (its step never ran)
        assert asyncio.run(state()) == (sent, 0)
        assert db_fetch(database_url, query, devices) == []
        first.kill()
        second.start()
        rows = wait_for(lambda: (r := db_fetch(database_url, query, devices)) and len(r) == len(devices) and r,
                        90, what="every device's alert from the next brain")
        assert {r["device_id"]: r["n"] for r in rows} == dict.fromkeys(devices, 1)
        wait_for(lambda: asyncio.run(state()) == (0, sent), 30, what="every findings message acked")
        time.sleep(2.0)
        assert {r["device_id"]: r["n"] for r in db_fetch(database_url, query, devices)} == dict.fromkeys(devices, 1)
    finally:
        second.stop()
        first.stop()
        asyncio.run(drop())
