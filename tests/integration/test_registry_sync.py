"""The live hub and the registry in step: positions from the registry, districts to it (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from ingest.records import Reading
from ioc.geo import City
from ioc.live.hub import LiveHub
from ioc.live.registry_sync import _sync_once
from storage.writes import BatchRows, write_batch
from tests.support.mqtt import unique_id

pytestmark = pytest.mark.integration

HB = (20.868, 106.65)  # inside Hồng Bàng in the shipped city file


async def test_unplaced_devices_get_registry_positions_and_the_registry_their_districts(db: asyncpg.Connection) -> None:
    placed, unplaced = unique_id("P"), unique_id("U")
    now = datetime.now(UTC)
    await write_batch(db, BatchRows(devices=[(d, "traffic", now, now, *HB, "online", None, now, None)
                                             for d in (placed, unplaced)]), "unnest")
    hub = LiveHub(City.load().district_of)
    hub.on_record(Reading(placed, "traffic", now, {"speed_kmh": 40.0}, lat=HB[0], lon=HB[1]), now)
    hub.on_record(Reading(unplaced, "traffic", now, {"speed_kmh": 41.0}), now)  # no position in this reading
    assert hub.table.devices[unplaced].lat is None
    written: dict[str, str | None] = {}
    await _sync_once(hub, db, written)
    assert (hub.table.devices[unplaced].lat, hub.table.devices[unplaced].district) == (HB[0], "HB")
    rows = {r["device_id"]: r["district"] for r in await db.fetch(
        "SELECT device_id, district FROM devices WHERE device_id = ANY($1::text[])", [placed, unplaced])}
    assert rows == {placed: "HB", unplaced: "HB"} and written == rows
