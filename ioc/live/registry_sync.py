"""Keep the live hub and the device registry in step, both ways, every ``every_s``.

* Positions in: a device reports its position only now and then (on connection and every 100th
  reading, say), so a hub started meanwhile may know a device without knowing where it is. Such devices
  are placed from the registry, which keeps the last position reported.
* Districts out: the hub places devices in districts from their positions; SQL consumers (the Grafana
  dashboards, reports) group by district too, so the registry keeps a copy. Only changes are written; a
  device the ingest has not registered yet is retried on the next pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ioc.live.hub import LiveHub
from storage.writes import write_districts

logger = logging.getLogger(__name__)


async def sync_registry(hub: LiveHub, pool: Any, every_s: float = 30.0) -> None:
    """Run until cancelled."""
    written: dict[str, str | None] = {}
    while True:
        await asyncio.sleep(every_s)
        try:
            async with pool.acquire(timeout=5) as conn:
                await _sync_once(hub, conn, written)
        except Exception as err:  # the database may be down: try again next pass
            logger.warning("live state and registry not synced: %s", err)


async def _sync_once(hub: LiveHub, conn: Any, written: dict[str, str | None]) -> None:
    unplaced = [d.device_id for d in hub.table.devices.values() if d.lat is None]
    if unplaced:
        for row in await conn.fetch("SELECT device_id, lat, lon FROM devices WHERE device_id = ANY($1::text[]) "
                                    "AND lat IS NOT NULL", unplaced):
            hub.place(row["device_id"], row["lat"], row["lon"])
    changed = [(d.device_id, d.district) for d in hub.table.devices.values()
               if d.district is not None and written.get(d.device_id) != d.district]
    if not changed:
        return
    await write_districts(conn, changed)
    # A device not yet in the registry matched no row: it is written again on a later pass.
    present = {r["device_id"] for r in await conn.fetch(
        "SELECT device_id FROM devices WHERE device_id = ANY($1::text[]) AND district IS NOT NULL",
        [d for d, _ in changed])}
    written.update((d, district) for d, district in changed if d in present)
