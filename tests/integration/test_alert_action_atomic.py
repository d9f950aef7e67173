"""An officer's action the engine fails on half way is undone, failed for good and answered 503, in the real database.

Before, a resolve whose engine call raised after resolving the incident's alerts in memory left them so: the
officer got an error, the screens (built from memory) showed them resolved, nothing was stored, and the next tick
finished the resolution in the officer's name and stored the incident resolved while its alert rows stayed open.
Now the action is undone, its ``cluster_actions`` row is failed (a next leader never applies it by surprise), the
engine keeps serving and the same action then applies and is stored once.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

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


async def _stage(pool: Any, lease: Lease) -> AlertStage:
    city = City.load()
    stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig())
    stage.ids = IdReserve()
    stage.engine.id_source = stage.ids

    async def guard(conn: Any, ch: Changes) -> None:
        await lease.fence(conn)

    stage.guard = guard
    await stage.load()
    return stage


async def _step(stage: AlertStage, signals: list[Signal]) -> None:
    stage._add(signals)
    assert await stage._reserve_ids()
    stage.step(datetime.now(UTC))
    await stage.flush()


async def _stored(pool: Any, incident_id: int) -> tuple[str, list[str], list[str]]:
    async with pool.acquire() as conn:
        state = await conn.fetchval("SELECT state FROM incidents WHERE id = $1", incident_id)
        alerts = await conn.fetch("SELECT state FROM alerts WHERE incident_id = $1 ORDER BY id", incident_id)
        events = await conn.fetch("SELECT action FROM alert_events WHERE incident_id = $1 AND actor = 'officer-an' "
                                  "ORDER BY id", incident_id)
    return state, [r["state"] for r in alerts], [r["action"] for r in events]


async def _failing_resolve(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ClusterConfig(lease_name=unique_lease(), lease_ttl_s=30.0, renew_every_s=1.0)
    pool = await create_pool(database_url, StorageConfig(), max_size=4)
    lease = Lease(database_url, cfg, unique_id("leader"), _nothing, _nothing)
    device = unique_id("BTS")
    try:
        assert await lease.acquire_once()
        stage = await _stage(pool, lease)
        await _step(stage, [Signal("mains_power_lost", f"mains_power_lost:{device}", True, datetime.now(UTC),
                                   device_id=device, kind="bts", severity=Severity.MAJOR, for_s=0)])
        (inc,) = [i for i in stage.engine.incidents.values() if device in stage.incident_view(i)["devices"]]
        worker = actions.ActionWorker(database_url, pool, stage, int(lease.epoch or 0))
        here = SimpleNamespace(alerts=stage, pool=pool, process_id=unique_id("all"), cluster=cfg,
                               node=SimpleNamespace(brain=SimpleNamespace(actions=worker)))

        def settle_then_fail(*args: Any) -> None:  # the incident's alert is resolved in memory by now
            raise RuntimeError("injected engine failure")

        with monkeypatch.context() as mp:
            mp.setattr(stage.engine, "_settle", settle_then_fail)
            with pytest.raises(actions.ActionFailed) as failed:
                await actions.apply(here, "resolve", inc.id, "officer-an", "mains back")
        assert failed.value.status == 503
        await _step(stage, [])  # the next tick finishes nothing of it
        assert await _stored(pool, inc.id) == ("open", ["open"], [])
        assert inc.state == State.OPEN and all(a.live for a in stage.engine.members(inc.id))  # memory as before
        assert "not applied" in str(failed.value) and not stage._unsaved
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT status, result FROM cluster_actions WHERE incident_id = $1", inc.id)
        assert row["status"] == "failed"  # its outcome: never taken again by this or a next leader
        assert await worker.run_once() == 0

        view = await actions.apply(here, "resolve", inc.id, "officer-an", "mains back")  # the engine serves
        assert view["state"] == "resolved"
        assert await _stored(pool, inc.id) == ("resolved", ["resolved"], ["alert_resolved", "incident_resolved"])
    finally:
        await lease.close()
        await pool.close()


def test_an_action_the_engine_fails_on_is_undone_failed_and_the_next_one_stored(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(_failing_resolve(database_url, monkeypatch))
