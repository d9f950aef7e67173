"""A page claimed by a leader that died before sending it goes out as soon as the next leader runs, not after
the claim's lease (real PostgreSQL, a real HTTP receiver)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from ioc.alerts.notify import NotificationDispatcher, NotifyConfig, targets_for
from storage import notifications as outbox

# The outbox fixtures (a database of its own, a pool on it) are test_notify_delivery's.
from tests.integration.test_notify_delivery import (  # noqa: F401
    SECRET,
    Receiver,
    enqueue,
    make_incident,
    notify_dsn,
    pool,
    row,
)

pytestmark = pytest.mark.integration


async def test_next_leader_takes_back_an_earlier_epochs_claim_at_once(pool: asyncpg.Pool) -> None:  # noqa: F811
    receiver = Receiver()
    try:
        config = NotifyConfig(webhook_urls=[receiver.url], webhook_secret=SECRET, lease_s=120.0)
        [nid] = await enqueue(pool, await make_incident(pool), targets_for(config, [], ["webhook"]))
        # Leader of epoch 3 claims the page and dies before sending it: the row is hidden for the lease.
        async with pool.acquire() as conn, conn.transaction():
            assert [r["id"] for r in await outbox.claim_due(conn, datetime.now(UTC), 10, 120.0, epoch=3)] == [nid]
        plain = NotificationDispatcher(pool, config)  # a dispatcher that knows no epoch waits the lease out
        assert await plain.send_once() == 0
        await plain.aclose()
        # A claim of the current epoch is not taken back (its own dispatcher may be sending it right now).
        same = NotificationDispatcher(pool, config)
        same.epoch = 3
        assert await same.send_once() == 0
        await same.aclose()

        nxt = NotificationDispatcher(pool, config)
        nxt.epoch = 4
        assert await nxt.send_once() == 1
        await nxt.aclose()
        assert len(receiver.requests) == 1 and (await row(pool, nid))["status"] == "sent"
        # A retry or a rate-limit deferral is not a claim: a later leader leaves its schedule alone.
        [nid2] = await enqueue(pool, await make_incident(pool), targets_for(config, [], ["webhook"]))
        async with pool.acquire() as conn, conn.transaction():
            await outbox.claim_due(conn, datetime.now(UTC), 10, 120.0, epoch=4)
            await outbox.mark_retry(conn, nid2, datetime(2100, 1, 1, tzinfo=UTC), "503 from the receiver")
            assert await outbox.release_stale_claims(conn, 5, datetime.now(UTC)) == 0
    finally:
        receiver.close()
