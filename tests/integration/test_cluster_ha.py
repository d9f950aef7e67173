"""High availability with real processes: two brain candidates and API replicas on one database and a real broker.

The module has a database and a Mosquitto of its own. On the shared ones a brain restored every live incident and
retried every pending page earlier tests had left, and its session took all of ``ioc/v1/#`` (retained statuses of
other runs, any other publisher's traffic) into a queue the shared broker caps at its default 1000 messages.

* SIGKILL the leader during an incident: the standby takes over within 15 s, an alarm published while no
  brain was running is still analysed (the brain's persistent session), no incident is opened twice and
  no notification is queued twice.
* An acknowledgement sent to one API replica reaches another replica's screen (WebSocket) within 2 s.
* A paused leader (SIGSTOP until its lease expires and the standby takes over, then SIGCONT) steps down
  and cannot write: its fenced writes are refused by the database.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import orjson
import pytest
import websockets

from ioc.cluster.config import ClusterConfig
from ioc.cluster.lease import Lease
from storage.cluster import FencedError, take_token
from tests.conftest import own_database
from tests.support.auth import make_token_sync
from tests.support.cluster import RoleProcess, cluster_env, db_fetch, lease, unique_lease, wait_for
from tests.support.mqtt import Publisher, iso, unique_id
from tests.support.services import private_mosquitto

pytestmark = pytest.mark.integration

FAILOVER_S = 15.0
HOOK = "http://127.0.0.1:9/ha-test-hook"  # nothing listens: pages stay in the outbox, where they are counted


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """This module's own database: no live incident or pending page of another test is restored with it."""
    yield from own_database()


@pytest.fixture(scope="module")
def mqtt_port() -> Iterator[int]:
    """This module's own broker (the project's queue limits): only its alarms reach the brains' sessions."""
    with private_mosquitto() as port:
        yield port


def _pid(holder: str) -> int:
    return int(holder.rsplit("-", 2)[1])


def _alarm(pub: Publisher, device: str, kind: str = "mains_power_lost") -> None:
    pub.publish(f"ioc/v1/bts/{device}/event", {"ts": iso(time.time()), "type": kind, "severity": "major",
                                               "detail": {}})
    pub.wait_all()


def _incidents_of(dsn: str, device: str) -> list[int]:
    rows = db_fetch(dsn, "SELECT DISTINCT incident_id FROM alerts WHERE device_id = $1", device)
    return sorted(r["incident_id"] for r in rows if r["incident_id"] is not None)


@dataclass
class Cluster:
    lease: str
    brains: list[RoleProcess]
    apis: list[RoleProcess]


@pytest.fixture
def cluster(database_url: str, mqtt_port: int, artifacts: Path) -> Iterator[Cluster]:
    """Two brain candidates and two API replicas (started in parallel), all on one lease of their own."""
    name = unique_lease()
    env = cluster_env(database_url, mqtt_port, name,
                      IOC_ALERTS__NOTIFY__WEBHOOK_URLS=f'["{HOOK}"]')
    token = make_token_sync(database_url, "admin", f"ha-{name}")
    procs = [RoleProcess(env, "brain", artifacts / "brain-a.log", token),
             RoleProcess(env, "brain", artifacts / "brain-b.log", token),
             RoleProcess(env, "api", artifacts / "api-a.log", token),
             RoleProcess(env, "api", artifacts / "api-b.log", token)]
    for p in procs:
        p.start(wait=False)
    try:
        for p in procs:
            wait_for(p._up, 60, what=f"{p.role} up")
        wait_for(lambda: lease(database_url, name)["valid"], 20, what="a leader")
        yield Cluster(name, procs[:2], procs[2:])
    finally:
        for p in procs:
            p.stop()  # and its process group: a SIGKILLed brain's pool worker was left running before
        # nothing it started outlives the test (a SIGKILLed process's children included)
        deadline = time.monotonic() + 10
        while (left := [line for p in procs for line in p.leftovers()]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"left running after the test: {left}"
        # The module's database outlives this test: later tests' dispatchers must not retry these pages.
        db_fetch(database_url, "UPDATE notifications SET status = 'dropped', last_error = 'test over' "
                 "WHERE target = $1 AND status = 'pending'", HOOK)


def _leader(dsn: str, name: str, brains: list[RoleProcess]) -> tuple[RoleProcess, RoleProcess, int]:
    row = wait_for(lambda: (r := lease(dsn, name))["valid"] and r, 20, what="a leader")
    pid = _pid(row["holder"])
    lead = next(b for b in brains if b.pid == pid)
    return lead, next(b for b in brains if b is not lead), int(row["epoch"])


def test_leader_killed_during_incident(database_url: str, mqtt_port: int, cluster: Cluster) -> None:
    name, brains, api_a = cluster.lease, cluster.brains, cluster.apis[0]
    lead, standby, epoch = _leader(database_url, name, brains)
    pub = Publisher(mqtt_port)
    first, during = unique_id("bts"), unique_id("bts")
    try:
        _alarm(pub, first)
        incident = wait_for(lambda: _incidents_of(database_url, first), 20, what="the incident")[0]
        wait_for(lambda: db_fetch(database_url, "SELECT id FROM notifications WHERE incident_id = $1", incident),
                 10, what="its page in the outbox")
        # The leader's stages write through their own pool, not the API's (a flood of requests cannot hold them)
        brain_conns = db_fetch(database_url, "SELECT pid FROM pg_stat_activity WHERE application_name = 'ioc-brain' "
                               "AND datname = current_database()")
        assert brain_conns, "the leader's stages use no pool of their own"
        lead.kill()  # SIGKILL in the middle of the incident
        killed = time.monotonic()
        _alarm(pub, during)  # while no brain runs: queued in the brain's persistent session
        _alarm(pub, first)  # the same problem again: must not open a second incident
        row = wait_for(lambda: (r := lease(database_url, name))["valid"] and r["epoch"] > epoch and r, 30,
                       what="the takeover")
        took = time.monotonic() - killed
        assert _pid(row["holder"]) == standby.pid
        assert took <= FAILOVER_S, f"failover took {took:.1f} s"
        wait_for(lambda: _incidents_of(database_url, during), 20, what="the alarm sent during the failover")
        # Still listed as live by any replica, with both devices, from the database (one truth).
        live = wait_for(lambda: [i for i in api_a.get("/api/incidents/live") if first in i["devices"]], 10,
                        what="the incident on a replica")
        assert len(live) == 1 and live[0]["id"] == incident
        detail = api_a.get(f"/api/incidents/{incident}")
        assert detail["member_count"] == live[0]["member_count"]
        time.sleep(2)  # let the new leader tick a few times over the repeated alarm
        assert _incidents_of(database_url, first) == [incident], "the incident was opened twice"
        ids = db_fetch(database_url, "SELECT id, count(*) AS n FROM alerts GROUP BY id HAVING count(*) > 1")
        assert ids == []
        pages = db_fetch(database_url, "SELECT reason, target, count(*) AS n FROM notifications "
                         "WHERE incident_id = $1 GROUP BY reason, target", incident)
        assert pages and all(p["n"] == 1 for p in pages), pages
        cluster_doc = api_a.get("/api/cluster")
        assert cluster_doc["leader"] == row["holder"]
        assert {m["role"] for m in cluster_doc["members"]} >= {"api", "brain"}
    finally:
        pub.close()


def test_ack_on_one_replica_reaches_another_screen(database_url: str, mqtt_port: int, cluster: Cluster) -> None:
    api_a, api_b = cluster.apis
    pub = Publisher(mqtt_port)
    device = unique_id("bts")
    try:
        _alarm(pub, device)
        incident = wait_for(lambda: _incidents_of(database_url, device), 20, what="the incident")[0]
        seen = asyncio.run(_ack_and_watch(api_a, api_b, incident))
    finally:
        pub.close()
    assert seen <= 2.0, f"the acknowledgement reached the other replica's screen after {seen:.2f} s"
    status, doc = api_b.request("POST", f"/api/incidents/{incident}/ack", {"note": "twice"})
    assert status == 409, doc  # applied once: a second ack is refused by the leader


async def _ack_and_watch(screen_on: RoleProcess, ack_on: RoleProcess, incident: int) -> float:
    url = f"ws://127.0.0.1:{screen_on.port}/ws/live"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {screen_on.token}"}) as ws:
        await asyncio.wait_for(ws.recv(), 10)  # the snapshot
        sent = time.monotonic()
        status, doc = await asyncio.to_thread(ack_on.request, "POST", f"/api/incidents/{incident}/ack",
                                              {"note": "on my way"})
        assert status == 200 and doc["state"] == "acknowledged", (status, doc)
        while time.monotonic() - sent < 10:
            raw = await asyncio.wait_for(ws.recv(), 10)
            frames = orjson.loads(raw)
            for frame in frames if isinstance(frames, list) else [frames]:
                body = frame.get("incident") if isinstance(frame, dict) else None
                if body and body.get("id") == incident and body.get("state") == "acknowledged":
                    return time.monotonic() - sent
    raise AssertionError("the acknowledgement never reached the other replica's screen")


def test_paused_leader_is_fenced(database_url: str, mqtt_port: int, cluster: Cluster) -> None:
    name, brains = cluster.lease, cluster.brains
    lead, standby, epoch = _leader(database_url, name, brains)
    pub = Publisher(mqtt_port)
    try:
        lead.signal(signal.SIGSTOP)
        wait_for(lambda: (r := lease(database_url, name))["epoch"] > epoch and r["valid"], 30, what="the takeover")
        _alarm(pub, unique_id("bts"))  # work for the new leader while the old one is frozen
        lead.signal(signal.SIGCONT)
        wait_for(lambda: f"lease '{name}' epoch {epoch} lost" in lead.log_text(), 20,
                 what="the old leader stepping down")
        wait_for(lambda: f"brain stopped (epoch {epoch}, lease lost)" in lead.log_text(), 10,
                 what="its stages stopping")
        assert _pid(lease(database_url, name)["holder"]) == standby.pid
    finally:
        pub.close()


async def _fenced_write(database_url: str) -> None:
    """Two leases in-process: the first is 'paused' (stops renewing), the second takes over; the first's write,
    fenced inside its transaction, is refused and rolled back."""
    cfg = ClusterConfig(lease_name=unique_lease(), lease_ttl_s=2.0, renew_every_s=0.5, acquire_every_s=0.2)
    events: list[str] = []

    async def note(what: str, epoch: int) -> None:
        events.append(f"{what} {epoch}")

    old = Lease(database_url, cfg, "old", lambda e: note("old+", e), lambda e: note("old-", e))
    new = Lease(database_url, cfg, "new", lambda e: note("new+", e), lambda e: note("new-", e))
    assert await old.acquire_once()
    assert not await new.acquire_once()
    conn = await asyncpg.connect(database_url)
    marker = unique_id("fence")
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS fence_probe (what text)")
        async with conn.transaction():  # the fence passes while the lease is ours
            await old.fence(conn)
            await conn.execute("INSERT INTO fence_probe VALUES ($1)", marker + "-ok")
        old._deadline = time.monotonic() + 60  # a paused process does not know time passed: it trusts its lease
        takeover = asyncio.create_task(new.run())
        await asyncio.wait_for(_until(lambda: new.epoch is not None), 10)
        with pytest.raises(FencedError):
            async with conn.transaction():
                await old.fence(conn)
                await conn.execute("INSERT INTO fence_probe VALUES ($1)", marker + "-late")
        rows = {r["what"] for r in await conn.fetch("SELECT what FROM fence_probe WHERE what LIKE $1", marker + "%")}
        assert rows == {marker + "-ok"}
        takeover.cancel()
        await asyncio.gather(takeover, return_exceptions=True)
    finally:
        await conn.close()
        await old.close()
        await new.close()


async def _until(predicate: object) -> None:
    while not predicate():  # type: ignore[operator]
        await asyncio.sleep(0.05)


def test_fence_refuses_a_write_after_takeover(database_url: str) -> None:
    asyncio.run(_fenced_write(database_url))


async def _shared_bucket(database_url: str) -> tuple[int, int]:
    """Two dispatchers' worth of connections race for one target's tokens: the bucket is one, in the database."""
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    target = unique_id("pager")
    try:
        async def five(conn: asyncpg.Connection) -> list[float]:
            return [await take_token(conn, "webhook", target, rate_per_s=0.01, burst=5.0) for _ in range(5)]

        waits = [w for ws in await asyncio.gather(*(five(c) for c in conns)) for w in ws]
        other = await take_token(conns[0], "webhook", unique_id("pager"), rate_per_s=0.01, burst=5.0)
    finally:
        for c in conns:
            await c.close()
    return sum(1 for w in waits if w == 0.0), int(other == 0.0)


def test_rate_limit_is_shared_by_every_dispatcher(database_url: str) -> None:
    granted, other = asyncio.run(_shared_bucket(database_url))
    assert granted == 5  # a burst of 5 for the target, however many processes ask
    assert other == 1  # another target has its own bucket
