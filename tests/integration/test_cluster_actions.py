"""Officers' actions are applied exactly once across a failover, in the real database.

The leader takes an action queued by a replica and applies it in memory, then loses its lease before its
result is stored (paused, fenced). Its effect and its result are stored in one transaction, so neither is:
the next leader takes the action again and applies it once; the replica gets the right answer and the
audit trail has one entry. Also: an action on the leader's own process is recorded with its result, an
action nobody takes is failed (never applied later), and a replayed alarm older than an officer's
resolution does not reopen the incident, also after the next leader restores the engine.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from ioc.alerts.config import AlertsConfig
from ioc.alerts.model import Changes, Severity, Signal, State
from ioc.alerts.stage import AlertStage
from ioc.cluster import actions
from ioc.cluster.config import ClusterConfig
from ioc.cluster.ids import IdReserve
from ioc.cluster.lease import Lease
from ioc.geo import City
from ioc.live.hub import LiveHub
from storage.config import StorageConfig
from storage.db import create_pool
from tests.support.cluster import unique_lease
from tests.support.mqtt import unique_id

pytestmark = pytest.mark.integration


async def _nothing(epoch: int) -> None:
    return None


def _lease(database_url: str, cfg: ClusterConfig, holder: str) -> Lease:
    return Lease(database_url, cfg, holder, _nothing, _nothing)


async def _stage(pool: Any, city: City, lease: Lease) -> AlertStage:
    stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig())
    stage.ids = IdReserve()
    stage.engine.id_source = stage.ids

    async def guard(conn: Any, ch: Changes) -> None:
        await lease.fence(conn)

    stage.guard = guard
    await stage.load()
    return stage


def _alarm(device: str, ts: datetime) -> Signal:
    return Signal("mains_power_lost", f"mains_power_lost:{device}", True, ts, device_id=device, kind="bts",
                  severity=Severity.MAJOR, title=f"BTS {device} on battery", explanation="alarm", for_s=0)


async def _observe(stage: AlertStage, signals: list[Signal]) -> None:
    stage._add(signals)
    assert await stage._reserve_ids()
    stage.step(datetime.now(UTC))
    await stage.flush()


async def _takeover(database_url: str, cfg: ClusterConfig, new: Lease) -> None:
    """The old leader is paused past its lease: it expires, the new one takes it (a new epoch)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE cluster_lease SET expires_at = now() - interval '1 s' WHERE name = $1",
                           cfg.lease_name)
    finally:
        await conn.close()
    assert await new.acquire_once()


async def _failover_between_apply_and_result(database_url: str) -> None:
    cfg = ClusterConfig(lease_name=unique_lease(), lease_ttl_s=30.0, renew_every_s=1.0)
    pool = await create_pool(database_url, StorageConfig(), max_size=4)
    city = City.load()
    old, new = _lease(database_url, cfg, unique_id("old")), _lease(database_url, cfg, unique_id("new"))
    device = unique_id("BTS")
    try:
        assert await old.acquire_once()
        first = await _stage(pool, city, old)
        await _observe(first, [_alarm(device, datetime.now(UTC))])
        (inc,) = [i for i in first.engine.incidents.values() if device in first.incident_view(i)["devices"]]
        assert inc.state == State.OPEN

        # The old leader is paused after applying the action in memory, before storing it.
        fenced = first.guard
        assert fenced is not None

        async def paused_then_fenced(conn: Any, ch: Changes) -> None:
            if ch.actions:
                await _takeover(database_url, cfg, new)
            await fenced(conn, ch)

        first.guard = paused_then_fenced
        replica = SimpleNamespace(alerts=None, pool=pool, process_id=unique_id("api"),
                                  cluster=ClusterConfig(action_timeout_s=20.0))
        answer = asyncio.create_task(actions.apply(replica, "ack", inc.id, "officer-an", "on my way"))
        w_old = actions.ActionWorker(database_url, pool, first, int(old.epoch or 0))
        while not await w_old.run_once():  # the replica's row appears; the old leader takes it
            await asyncio.sleep(0.05)
        assert first.engine.incidents[inc.id].state == State.ACKNOWLEDGED  # applied in memory only
        assert not answer.done()

        second = await _stage(pool, city, new)  # the next leader restores from the database: still open
        assert second.engine.incidents[inc.id].state == State.OPEN
        w_new = actions.ActionWorker(database_url, pool, second, int(new.epoch or 0))
        assert await w_new.run_once() == 1
        view = await asyncio.wait_for(answer, 20)
        assert view["id"] == inc.id and view["state"] == "acknowledged" and view["acked_by"] == "officer-an"
        assert await w_new.run_once() == 0  # done: never applied again

        async with pool.acquire() as conn:
            acks = await conn.fetchval("SELECT count(*) FROM alert_events WHERE incident_id = $1 "
                                       "AND action = 'acknowledged'", inc.id)
            row = await conn.fetchrow("SELECT status, epoch FROM cluster_actions WHERE incident_id = $1", inc.id)
            state = await conn.fetchval("SELECT state FROM incidents WHERE id = $1", inc.id)
        assert acks == 1 and state == "acknowledged"
        assert row["status"] == "done" and row["epoch"] == new.epoch

        # On the leader's own process: recorded as taken by its epoch, its result stored with its effect.
        here = SimpleNamespace(alerts=second, pool=pool, process_id=unique_id("all"), cluster=cfg,
                               node=SimpleNamespace(brain=SimpleNamespace(actions=w_new)))
        view = await actions.apply(here, "comment", inc.id, "officer-an", "generator started")
        assert view["id"] == inc.id
        with pytest.raises(actions.ActionFailed) as refused:  # acknowledged already: refused, and recorded so
            await actions.apply(here, "ack", inc.id, "officer-binh", None)
        assert refused.value.status == 409
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT action, status, epoch FROM cluster_actions WHERE incident_id = $1 "
                                    "ORDER BY id", inc.id)
        assert [(r["action"], r["status"], r["epoch"]) for r in rows] == [
            ("ack", "done", new.epoch), ("comment", "done", new.epoch), ("ack", "failed", new.epoch)]
        assert await w_new.run_once() == 0

        # A replayed copy of the alarm (older than the resolution) does not reopen what the officer resolved,
        # neither on this leader nor on the next one, which restores the resolution times from the database.
        await actions.apply(here, "resolve", inc.id, "officer-an", "mains back")
        await _observe(second, [_alarm(device, datetime.now(UTC) - timedelta(seconds=5))])
        assert second.engine.incidents[inc.id].state == State.RESOLVED
        third = await _stage(pool, city, new)
        await _observe(third, [_alarm(device, datetime.now(UTC) - timedelta(seconds=5))])
        assert third.engine.incidents[inc.id].state == State.RESOLVED
        assert not any(a.key == f"mains_power_lost:{device}" for a in third.engine.by_key.values())
        await _observe(third, [_alarm(device, datetime.now(UTC) + timedelta(seconds=1))])  # really back
        assert third.engine.incidents[inc.id].live  # reopened (still the acknowledging officer's)
        await third.act("resolve", inc.id, "officer-an", "test over")  # later tests share the database
    finally:
        await old.close()
        await new.close()
        await pool.close()


def test_an_action_is_applied_once_across_a_failover(database_url: str) -> None:
    asyncio.run(_failover_between_apply_and_result(database_url))


async def _nobody_takes_it(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    try:
        replica = SimpleNamespace(alerts=None, pool=pool, process_id=unique_id("api"),
                                  cluster=ClusterConfig(action_timeout_s=0.5))
        incident_id = -abs(hash(unique_id())) % 10**9  # no leader runs for it: nobody takes it
        with pytest.raises(actions.ActionFailed) as failed:
            await actions.apply(replica, "ack", incident_id, "officer-an", None)
        assert failed.value.status == 503
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT status, epoch FROM cluster_actions WHERE incident_id = $1",
                                      incident_id)
        assert row["status"] == "failed" and row["epoch"] is None
    finally:
        await pool.close()


def test_an_action_nobody_takes_is_failed_not_applied_later(database_url: str) -> None:
    asyncio.run(_nobody_takes_it(database_url))
