"""A change set the database refuses is set aside with its error; it never blocks later changes.

An officer's note with a NUL character (here put straight into the stage, behind the API's text rule) is
applied in memory and refused by PostgreSQL. Before, the flush retried that change set on every tick for
ever, holding every later incident change and page behind it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ingest.records import ParsedMessage, StatusUpdate
from ioc.alerts.config import AlertsConfig
from ioc.alerts.stage import AlertStage
from ioc.cluster.ids import IdReserve
from ioc.geo import City
from ioc.live.hub import LiveHub
from storage.config import StorageConfig
from storage.db import create_pool
from storage.set_aside import list_set_aside

pytestmark = pytest.mark.integration


async def test_a_refused_change_is_set_aside_and_later_changes_are_stored(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    city = City.load()
    device = f"BTS-{uuid.uuid4().hex[:8]}"
    try:
        stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig())
        # ids from the database's sequences, as the brain draws them: ids of the engine's own numbering would be
        # ahead of the sequences, and a later brain on this database would draw them again (and overwrite our rows)
        stage.ids = IdReserve()
        stage.engine.id_source = stage.ids
        await stage.load()
        now = datetime.now(UTC)
        stage.on_parsed(ParsedMessage([StatusUpdate(device, "bts", now, "offline", "power cut")], []))
        assert await stage._reserve_ids()  # what run() does before each step
        for k in range(0, 900, 30):  # past every hold
            stage.step(now + timedelta(seconds=k))
        await stage.flush()
        (inc,) = [i for i in stage.engine.live_incidents() if device in stage.incident_view(i)["devices"]]

        await stage.act("comment", inc.id, "officer-a", "a\x00b")  # refused by PostgreSQL, not by the engine
        assert not stage._unsaved, "the refused change must not wait in front of later ones"
        await stage.act("comment", inc.id, "officer-a", "the next note")
        async with pool.acquire() as conn:
            notes = [r["note"] for r in await conn.fetch(
                "SELECT note FROM alert_events WHERE incident_id = $1 AND action = 'commented' ORDER BY id", inc.id)]
            aside = [r for r in await list_set_aside(conn, 50, "alerts") if f"incident {inc.id}" in r["what"]]
        assert notes == ["the next note"]
        assert len(aside) == 1
        assert "audit commented" in aside[0]["what"]
        assert "0x00" in aside[0]["error"] or "\\u0000" in aside[0]["error"] or "NUL" in aside[0]["error"].upper()
        assert "a\\u0000b" in aside[0]["payload"]
        assert stage.flush_failing_since is None
    finally:
        await pool.close()
