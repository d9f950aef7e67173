"""The alert stage keeps device arrivals across a restart, in the real database.

A BTS that died while the service was down is called silent (and paged) once its usual gaps have passed
after the restart; the downtime itself makes no device silent.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from ingest.records import ParsedMessage, Reading
from ioc.alerts.config import AlertsConfig
from ioc.alerts.stage import AlertStage
from ioc.geo import City
from ioc.live.hub import LiveHub
from storage.config import StorageConfig
from storage.db import create_pool

pytestmark = pytest.mark.integration


def report(stage: AlertStage, device_id: str, at: datetime) -> None:
    stage.clock = lambda: at  # arrival times are on the service's clock
    stage.on_parsed(ParsedMessage([Reading(device_id, "bts", at, {"battery_pct": 100.0})], []))


async def test_a_bts_that_died_during_downtime_is_silent_after_the_restart(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    city = City.load()
    tag = uuid.uuid4().hex[:8]
    dead, alive = f"BTS-{tag}-dead", f"BTS-{tag}-alive"
    past = datetime.now(UTC) - timedelta(hours=2)
    try:
        first = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig())
        for k in range(10):  # both report every minute, then the service stops
            for dev in (dead, alive):
                report(first, dev, past + timedelta(minutes=k))
        await first.save()

        second = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig())
        await second.load()
        assert second.since is not None
        start = second.since
        assert not second.step(start + timedelta(seconds=100), store=False).alerts  # the downtime is ours
        report(second, alive, start + timedelta(seconds=30))
        report(second, alive, start + timedelta(seconds=90))
        second.clock = lambda: datetime.now(UTC)
        fired = second.step(start + timedelta(seconds=220), store=False).alerts.values()
        silent = [a for a in fired if a.rule == "device_silent"]
        assert [a.device_id for a in silent] == [dead]
        assert silent[0].evidence["silent_s"] > 2 * 3600 - 600  # the whole silence, downtime included
        assert re.fullmatch(r"nothing received for 11\d min \(usually every 60 s\)", silent[0].explanation)
    finally:
        await pool.close()
