"""A message yielding more alert signals than one message may is refused, set aside, and acked (real PostgreSQL).

Before, a message whose signals alone passed the queue's bound (MAX_SIGNALS) was dropped at the bound, its
position held for redelivery, dropped again at every redelivery: never acked, sent for ever, every later message
held behind it. Now it is refused whole (``MESSAGE_SIGNALS``), one ``set_aside`` row says why and what it held,
and the acked position passes it once that row is stored; the next message is applied as usual.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ingest.records import ParsedMessage, StatusUpdate
from ioc.alerts.config import AlertsConfig
from ioc.alerts.oversize import MESSAGE_SIGNALS
from ioc.alerts.stage import MAX_SIGNALS, AlertStage
from ioc.geo import City
from ioc.live.hub import LiveHub
from storage.config import StorageConfig
from storage.db import create_pool
from storage.set_aside import list_set_aside
from tests.conftest import own_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """This module's own database (its open alerts would join other tests' incidents)."""
    yield from own_database()


def _statuses(device: str, count: int, now: datetime) -> ParsedMessage:
    """``count`` status records: two signals each (offline, degraded)."""
    return ParsedMessage([StatusUpdate(device, "bts", now, "offline", "power cut") for _ in range(count)], [])


async def test_a_message_past_the_queue_bound_is_set_aside_and_acked_and_the_next_one_applied(
        database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    city = City.load()
    hostile, good = f"BTS-{uuid.uuid4().hex[:8]}", f"BTS-{uuid.uuid4().hex[:8]}"
    seq = [0]
    try:
        stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig())
        stage.position, stage.held_acks = (lambda: seq[0]), True  # as the brain ties them (tie_acks)
        await stage.load()
        now = datetime.now(UTC)
        seq[0] = 1
        stage.on_parsed(_statuses(hostile, MAX_SIGNALS // 2 + 1, now))  # alone past the queue's bound
        seq[0] = 2
        stage.on_parsed(_statuses(good, 1, now))
        assert len(stage._signals) == 2 and stage.lost_after is None and not stage.backlogged()
        for k in range(0, 900, 30):  # past every hold: the good device's alert fires
            stage.step(now + timedelta(seconds=k))
        await stage.flush()
        assert stage.stored_seq == 2, "both messages acked: the refused one once its row is stored"
        async with pool.acquire() as conn:
            aside = [r for r in await list_set_aside(conn, 10, "alerts") if r["what"].startswith("message 1:")]
            stored = await conn.fetchval("SELECT count(*) FROM alerts WHERE device_id = $1", good)
            hostile_rows = await conn.fetchval("SELECT count(*) FROM alerts WHERE device_id = $1", hostile)
        assert stored == 1 and hostile_rows == 0
        assert len(aside) == 1 and f"more than {MESSAGE_SIGNALS} alert signals" in aside[0]["error"]
        assert f'"records":{MAX_SIGNALS // 2 + 1}' in aside[0]["payload"] and hostile in aside[0]["payload"]
        assert '"device_offline"' in aside[0]["payload"]
        assert stage.health_problems() == []
    finally:
        await pool.close()


async def test_a_message_at_the_cap_is_applied(database_url: str) -> None:
    """The cap is per message, inclusive: a message of exactly ``message_signals`` is queued as before."""
    city = City.load()
    stage = AlertStage(LiveHub(city.district_of), None, city, AlertsConfig())
    stage.message_signals = 10
    now = datetime.now(UTC)
    stage.on_parsed(_statuses("BTS-cap", 5, now))
    assert len(stage._signals) == 10 and not stage._refused_messages
    stage.on_parsed(_statuses("BTS-cap", 6, now))
    assert len(stage._signals) == 10 and len(stage._refused_messages) == 1
    assert stage._refused_messages[0][2]["signals_seen"] == 12 and stage._refused_messages[0][2]["records"] == 6
