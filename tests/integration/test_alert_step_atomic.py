"""Against PostgreSQL: a step whose reserved ids run out half way stores every alert once the ids come, and the
acked position (``stored_seq``) covers only what is stored; a signal no step can apply is set aside first."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from ingest.records import DeviceEvent, ParsedMessage
from ioc.alerts.config import AlertsConfig
from ioc.alerts.model import Severity, Signal
from ioc.alerts.stage import AlertStage
from ioc.cluster.ids import IdReserve
from ioc.geo import City
from ioc.live.hub import LiveHub
from storage.cluster import reserve_ids
from storage.config import StorageConfig
from storage.db import create_pool
from storage.set_aside import list_set_aside

pytestmark = pytest.mark.integration


async def test_ids_running_out_mid_step_store_every_alert_and_ack_only_what_is_stored(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    city = City.load()
    tag = uuid.uuid4().hex[:8]
    devices = [f"BTS-{tag}-a", f"BTS-{tag}-b"]
    try:
        stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig())
        await stage.load()
        seq = [0]
        stage.position = lambda: seq[0]
        stage.ids = IdReserve()
        stage.engine.id_source = stage.ids
        async with pool.acquire() as conn:  # one alert and one incident: the second alert runs out
            stage.ids._ids["alert"].extend(await reserve_ids(conn, "alerts_id_seq", 2))
            stage.ids._ids["incident"].extend(await reserve_ids(conn, "incidents_id_seq", 1))
        now = datetime.now(UTC)
        for dev in devices:
            stage.on_parsed(ParsedMessage([DeviceEvent(dev, "bts", now, "mains_power_lost", "major")], []))
            seq[0] += 1
        naive = now.replace(tzinfo=None)  # the engine cannot compare it with its aware clock
        stage._signals.append(Signal("device_event", f"door_open:{tag}", True, naive, severity=Severity.CRITICAL))
        stage._step_safely(now)
        await stage.flush()
        assert stage.stored_seq == 0  # nothing of it stored: nothing acked
        assert await stage._reserve_ids()  # the next tick's reservation
        stage._step_safely(now)
        await stage.flush()
        async with pool.acquire() as conn:
            stored = {r["device_id"] for r in await conn.fetch(
                "SELECT device_id FROM alerts WHERE device_id = ANY($1::text[])", devices)}
            aside = [r for r in await list_set_aside(conn, 50, "alerts") if f"door_open:{tag}" in r["what"]]
        assert stored == set(devices)
        assert len(aside) == 1 and "TypeError" in aside[0]["error"]
        assert stage.stored_seq == 2 and not stage._refused and not stage._unsaved
    finally:
        await pool.close()
