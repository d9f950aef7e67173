"""Write the district the live hub placed each device in to the device registry.

The hub places devices on the city map from the positions they report; SQL consumers (the Grafana
dashboards, reports) group by district too, so the registry keeps a copy. Only changes are written,
a batch every ``every_s``; a device the ingest has not registered yet is retried on the next pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ioc.live.hub import LiveHub
from storage.writes import write_districts

logger = logging.getLogger(__name__)


async def sync_districts(hub: LiveHub, pool: Any, every_s: float = 30.0) -> None:
    """Run until cancelled."""
    written: dict[str, str | None] = {}
    while True:
        await asyncio.sleep(every_s)
        changed = [(d.device_id, d.district) for d in hub.table.devices.values()
                   if d.district is not None and written.get(d.device_id) != d.district]
        if not changed:
            continue
        try:
            async with pool.acquire(timeout=5) as conn:
                await write_districts(conn, changed)
        except Exception as err:  # the database may be down: try again next pass
            logger.warning("device districts not written yet: %s", err)
            continue
        # A device not yet in the registry matched no row: written again after the ingest registers it.
        async with pool.acquire(timeout=5) as conn:
            present = {r["device_id"] for r in await conn.fetch(
                "SELECT device_id FROM devices WHERE device_id = ANY($1::text[]) AND district IS NOT NULL",
                [d for d, _ in changed])}
        written.update((d, district) for d, district in changed if d in present)
