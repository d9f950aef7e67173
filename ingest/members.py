"""How many ingest workers share this one's subscription, so that a device's byte share holds deployment-wide.

With N workers on one shared subscription the broker spreads each device's messages over them, and a worker that
granted the device a whole share (:mod:`ingest.device_rate`) gave it N shares in all. So each worker keeps a member
row in the cluster's lease table (``ingest-member:<share group>:<holder>``, :func:`storage.cluster.member_beat`),
renewed every :data:`BEAT_S` for :data:`TTL_S`, and grants each device 1/N of its share, N being the live members
of its group, itself included. Without a share group (every worker reads every message) or before the first count,
N is 1; while the database cannot be reached the last count holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import asyncpg

from ingest.device_rate import DeviceRate
from storage import cluster as sql

logger = logging.getLogger("ingest.worker")

BEAT_S = 5.0
TTL_S = 15.0


def share_group(subscriptions: tuple[str, ...]) -> str | None:
    """The share group of an ingest session's subscriptions (``$share/<group>/...``), or None."""
    for topic in subscriptions:
        if topic.startswith("$share/"):
            return topic.split("/", 2)[1]
    return None


class Membership:
    """This worker's member row; each count of live members sets ``rate``'s shares."""

    def __init__(self, group: str | None, client_id: str, rate: DeviceRate, beat_s: float = BEAT_S,
                 ttl_s: float = TTL_S) -> None:
        self.group, self.rate, self.beat_s, self.ttl_s = group, rate, beat_s, ttl_s
        self.prefix = f"ingest-member:{group}:"
        self.holder = f"{client_id}-{uuid.uuid4().hex[:8]}"  # a restarted worker is a new member

    async def run(self, pool: asyncpg.Pool) -> None:
        if self.group is None:
            return
        try:
            while True:
                try:
                    async with pool.acquire(timeout=10) as conn:
                        members = await sql.member_beat(conn, self.prefix, self.holder, self.ttl_s)
                    if members != self.rate.shares:
                        logger.info("%d ingest workers in share group %r: each device's share here is 1/%d",
                                    members, self.group, members)
                    self.rate.share(members)
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
                    logger.warning("ingest members not counted (%s); each device's share stays 1/%d",
                                   err, self.rate.shares)
                await asyncio.sleep(self.beat_s)
        finally:  # the others grant more at once rather than after TTL_S
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    async with pool.acquire() as conn:
                        await sql.member_leave(conn, self.prefix, self.holder)
