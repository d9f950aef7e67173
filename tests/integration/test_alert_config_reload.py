"""A silence stored by the API whose reload then fails is still applied, at the engine's next tick.

Before, the route stored the silence and then awaited the engine's reload: a database blink between the two
answered 500 for a change that was committed (the officer retries and gets a second silence) and left the engine
without it until the periodic reload (30 s). Now the route answers as stored and the next tick applies it.
The database is the real one; the blink is injected into the roster read the reload makes.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from ioc.alerts.config import AlertsConfig
from ioc.alerts.stage import AlertStage
from ioc.api import routes_alerts
from ioc.geo import City
from ioc.live.hub import LiveHub
from storage import alerts as store
from storage.config import StorageConfig
from storage.db import create_pool

pytestmark = pytest.mark.integration


async def test_a_stored_silence_whose_reload_fails_is_applied_at_the_next_tick(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=4)
    city = City.load()
    stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig(tick_s=0.05, reload_s=3600))
    district = f"Z{uuid.uuid4().hex[:6]}"
    runner: asyncio.Task[Any] | None = None
    try:
        await stage.load()
        real = store.list_officers
        blinks = 0

        async def blinking(conn: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal blinks
            if blinks == 0:
                blinks += 1
                raise ConnectionResetError("the database blinked")
            return await real(conn, *args, **kwargs)

        monkeypatch.setattr(store, "list_officers", blinking)
        async with pool.acquire() as conn:
            row = await store.create_silence(conn, {"district": district}, datetime.now(UTC),
                                             datetime.now(UTC) + timedelta(hours=1), "maintenance", "officer-an")
        request = SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(alerts=stage, pool=pool,
                                                                            process_id="test")))
        await routes_alerts._reload(request)  # type: ignore[arg-type]  # stored: no exception reaches the officer
        assert blinks == 1 and stage.reload_wanted
        assert not any(s.id == row["id"] for s in stage.engine.silences)

        runner = asyncio.create_task(stage.run())
        for _ in range(100):  # the periodic reload is an hour away: only the retry can apply it
            if any(s.id == row["id"] for s in stage.engine.silences):
                break
            await asyncio.sleep(0.05)
        assert any(s.id == row["id"] for s in stage.engine.silences)
        assert not stage.reload_wanted
    finally:
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM silences WHERE matchers->>'district' = $1", district)
        await pool.close()
