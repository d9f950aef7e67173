"""The ingest side of the partitioned stream: committed readings, with their district, onto JetStream."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ingest.records import ParsedMessage, Reading
from ioc.partition.stream import Publisher, Row

logger = logging.getLogger(__name__)

DistrictOf = Callable[[float | None, float | None], str | None]


class StreamFeed:
    """Called by an ingest worker after each commit, before the broker acks (``IngestWorker.after_commit``).

    The district of a device comes from the reading's position, else from the registry (re-read every
    ``refresh_s``); a device with neither goes to the partition of its own id until its place is known.
    """

    def __init__(self, publisher: Publisher, district_of: DistrictOf, pool: Any, refresh_s: float = 60.0,
                 attempts: int = 5) -> None:
        self.publisher, self.district_of, self.pool = publisher, district_of, pool
        self.refresh_s, self.attempts = refresh_s, attempts
        self._districts: dict[str, str] = {}
        self._loaded_at = -1e9
        self.failed = 0

    async def __call__(self, messages: list[ParsedMessage]) -> None:
        readings = [rec for msg in messages for rec in msg.records if isinstance(rec, Reading)]
        if not readings:
            return
        await self._refresh()
        rows = []
        for rec in readings:
            district = self._district(rec)
            ts = rec.ts.timestamp()
            rows += [Row(rec.device_id, rec.kind, district, metric, ts, value) for metric, value in rec.metrics.items()]
        digest = hashlib.blake2b(repr([(r.device_id, r.metric, r.ts) for r in rows]).encode(), digest_size=12)
        for attempt in range(self.attempts):  # a redelivered batch has the same id: JetStream stores it once
            try:
                await self.publisher.publish(rows, msg_id=digest.hexdigest())
                return
            except Exception as err:
                logger.warning("readings not put on the stream yet (%s); retry %d", err, attempt + 1)
                await asyncio.sleep(min(5.0, 0.2 * 2**attempt))
        self.failed += len(rows)  # stored in the database all the same; the partitioned analytics miss them
        logger.error("%d readings not put on the analytics stream (stored in the database)", len(rows))

    def _district(self, rec: Reading) -> str:
        if rec.lat is not None:
            found = self.district_of(rec.lat, rec.lon)
            if found:
                self._districts[rec.device_id] = found
                return found
        return self._districts.get(rec.device_id, "")

    async def _refresh(self) -> None:
        if time.monotonic() - self._loaded_at < self.refresh_s:
            return
        self._loaded_at = time.monotonic()
        try:
            async with self.pool.acquire(timeout=5) as conn:
                rows = await conn.fetch("SELECT device_id, lat, lon FROM devices WHERE lat IS NOT NULL")
        except Exception as err:
            logger.warning("device places not read (%s)", err)
            return
        for r in rows:
            district = self.district_of(r["lat"], r["lon"])
            if district:
                self._districts[r["device_id"]] = district
