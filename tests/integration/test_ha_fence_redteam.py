"""HA red team: a leader deposed mid-flight writes nothing the next leader owns (real PostgreSQL, a real webhook
receiver).

Leader A's lease is taken by B while A is in a step (A does not renew: as if paused); A then resumes and tries its
writes. Its notification dispatcher had fenced only its claims: resumed, it sent pages B had already sent and
recorded outcomes over B's (a page B was retrying marked 'sent'); its alert stage wrote ``set_aside`` rows. Now
every such write is refused and counted, B's state stays, and each page reaches the receiver once, or, when A's
request was already on its way as it lost the lease, again under the same notification id (receivers drop it).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import UTC, datetime

import asyncpg
import pytest

from ioc.alerts.notify import NotificationDispatcher, NotifyConfig, targets_for
from ioc.cluster.config import ClusterConfig
from ioc.cluster.lease import Lease
from ioc.geo import City
from storage.cluster import FencedError
from storage.config import StorageConfig
from storage.db import create_pool
from tests.integration.test_cluster_actions import _alarm as alarm
from tests.integration.test_cluster_actions import _lease as lease_of
from tests.integration.test_cluster_actions import _stage as stage_of
from tests.integration.test_cluster_actions import _takeover as takeover
from tests.integration.test_ha_redteam import database_url  # noqa: F401  (a database of its own: the outbox is ours)
from tests.integration.test_notify_delivery import SECRET, Receiver, enqueue, make_incident, row
from tests.support.cluster import unique_lease
from tests.support.mqtt import unique_id
from tests.support.tasks import until

pytestmark = pytest.mark.integration


def leases(database_url: str) -> tuple[ClusterConfig, Lease, Lease]:  # noqa: F811
    cfg = ClusterConfig(lease_name=unique_lease(), lease_ttl_s=30.0, renew_every_s=1.0)
    return cfg, lease_of(database_url, cfg, unique_id("a")), lease_of(database_url, cfg, unique_id("b"))


def dispatcher(pool: asyncpg.Pool, config: NotifyConfig, lease: Lease) -> NotificationDispatcher:
    """The leader's dispatcher as the brain sets it up (ioc/cluster/brain.py)."""
    d = NotificationDispatcher(pool, config)
    d.guard, d.epoch, d.shared_limits = lease.fence, lease.epoch, True
    return d


def webhook_ids(receiver: Receiver) -> Counter[str]:
    """Deliveries per idempotency key (the ``webhook-id`` header: the notification id)."""
    return Counter({k.lower(): v for k, v in headers.items()}["webhook-id"] for _, headers, _ in receiver.requests)


async def pages(pool: asyncpg.Pool, config: NotifyConfig, count: int) -> list[int]:
    ids: list[int] = []
    for _ in range(count):
        ids += await enqueue(pool, await make_incident(pool), targets_for(config, [], ["webhook"]))
    await pool.execute("TRUNCATE notify_rate")  # a fresh bucket: the burst covers every page
    return ids


async def test_a_leader_paused_after_its_claim_sends_nothing_the_next_leader_sent(
        database_url: str) -> None:  # noqa: F811
    """A claims three pages and stalls before sending them (its one pooled connection is held: it waits for it
    as a paused process waits for SIGCONT). B takes the lease, takes A's claims back and sends them. A resumes:
    before, it sent all three again (each page twice) and its pass went on; now its check before each send is
    fenced: refused, counted, nothing sent, B's outcomes stay."""
    cfg, a_lease, b_lease = leases(database_url)
    receiver = Receiver()
    config = NotifyConfig(webhook_urls=[receiver.url], webhook_secret=SECRET)
    a_pool = await create_pool(database_url, StorageConfig(), min_size=1, max_size=1)
    b_pool = await create_pool(database_url, StorageConfig(), max_size=3)
    try:
        ids = await pages(b_pool, config, 3)
        assert await a_lease.acquire_once()
        a = dispatcher(a_pool, config, a_lease)
        a_pass = asyncio.create_task(a.send_once())
        await until(lambda: a_pool.get_idle_size() == 0, 5, "A in its claim", every=0)
        held = await a_pool.acquire()  # queued behind A's claim: A's next step waits for it
        try:
            claims = await b_pool.fetch("SELECT claim_epoch FROM notifications WHERE id = ANY($1)", ids)
            assert [r["claim_epoch"] for r in claims] == [a_lease.epoch] * 3, "A's claim is committed"
            assert not receiver.requests and not a_pass.done()
            await takeover(database_url, cfg, b_lease)
            b = dispatcher(b_pool, config, b_lease)
            assert await b.send_once() == 3  # A's claims taken back at once, sent
            await b.aclose()
            b_rows = [await row(b_pool, nid) for nid in ids]
            assert [r["status"] for r in b_rows] == ["sent"] * 3
        finally:
            await a_pool.release(held)  # A resumes
        outcome = (await asyncio.gather(a_pass, return_exceptions=True))[0]
        await a.aclose()
        assert webhook_ids(receiver) == Counter({str(nid): 1 for nid in ids}), "a page sent twice"
        assert [await row(b_pool, nid) for nid in ids] == b_rows
        assert isinstance(outcome, FencedError), f"A's pass went on: {outcome!r}"
        assert a.fenced == 1 and a_lease.refused == 1  # its first check before a send; the pass stopped there
    finally:
        receiver.close()
        await a_lease.close()
        await b_lease.close()
        await a_pool.close()
        await b_pool.close()


async def test_a_leader_deposed_while_its_page_is_on_the_way_records_no_outcome_over_the_next_leaders(
        database_url: str) -> None:  # noqa: F811
    """A's request for page 1 is at the receiver (answered only later) with pages 2 and 3 claimed behind it when
    B takes the lease. B sends the three; the receiver answers B's try of page 1 with 503, so B keeps it pending
    for a retry. A's answer (200) then comes: before, A marked page 1 'sent' over B's retry and sent pages 2 and 3
    again; now its outcome is refused and counted and its pass stops. Page 1 goes out again by B, under the same
    webhook-id as A's (at least once, one key); pages 2 and 3 reach the receiver once."""
    cfg, a_lease, b_lease = leases(database_url)
    receiver = Receiver()
    config = NotifyConfig(webhook_urls=[receiver.url], webhook_secret=SECRET, retry_base_s=0.05, retry_max_s=0.1)
    pool = await create_pool(database_url, StorageConfig(), max_size=6)
    arrived, let_go = threading.Event(), threading.Event()
    try:
        first, *rest = ids = await pages(pool, config, 3)
        tries: Counter[str] = Counter()

        def answer(headers: dict[str, str]) -> int:
            nid = headers["webhook-id"]
            tries[nid] += 1
            if nid == str(first) and tries[nid] == 1:  # A's request: on its way as A loses the lease
                arrived.set()
                let_go.wait(20)
                return 200
            return 503 if nid == str(first) and tries[nid] == 2 else 200  # B's first try fails

        receiver.answer = answer
        assert await a_lease.acquire_once()
        a = dispatcher(pool, config, a_lease)
        a_pass = asyncio.create_task(a.send_once())
        assert await asyncio.to_thread(arrived.wait, 10), "A's request for page 1"
        await takeover(database_url, cfg, b_lease)
        b = dispatcher(pool, config, b_lease)
        try:
            assert await b.send_once() == 3
            b_first = await row(pool, first)
            assert b_first["status"] == "pending" and b_first["attempts"] == 1 and "503" in b_first["last_error"]
            let_go.set()  # A's answer comes
            outcome = (await asyncio.gather(a_pass, return_exceptions=True))[0]
            assert await row(pool, first) == b_first, "A's outcome replaced B's"
            assert isinstance(outcome, FencedError), f"A's pass went on: {outcome!r}"
            assert a.fenced == 1 and a_lease.refused == 1
            # B's retry delivers page 1; every copy of it carries the one key.
            for _ in range(100):
                if (await row(pool, first))["status"] == "sent":
                    break
                assert await b.send_once() <= 1
                await asyncio.sleep(0.05)
        finally:
            let_go.set()
            await a.aclose()
            await b.aclose()
        assert webhook_ids(receiver) == Counter({str(first): 3, **{str(nid): 1 for nid in rest}})
        assert [(await row(pool, nid))["status"] for nid in ids] == ["sent"] * 3
    finally:
        receiver.close()
        await a_lease.close()
        await b_lease.close()
        await pool.close()


async def test_a_deposed_alert_stage_sets_nothing_aside(database_url: str) -> None:  # noqa: F811
    """A's stage holds a signal no step could apply and a message with too many signals, to set aside before their
    input is acked; B takes the lease first. Before, A wrote both ``set_aside`` rows anyway (and counted the input
    stored); now both writes are refused and counted, A keeps them unacked, and B's own rows are the only ones."""
    cfg, a_lease, b_lease = leases(database_url)
    pool = await create_pool(database_url, StorageConfig(), max_size=4)
    city = City.load()
    tag = unique_id("aside")
    try:
        assert await a_lease.acquire_once()
        a = await stage_of(pool, city, a_lease)
        await a.flush()  # what its load changed, stored while it leads
        refused = [(alarm(f"{tag}-dev", datetime.now(UTC)), "ValueError: cannot compare")]
        message = (f"{tag} message 7: more than 3 alert signals", "too many", {"position": 7})
        a._refused, a._refused_messages, a._step_seq = list(refused), [message], 7
        await takeover(database_url, cfg, b_lease)
        await a.flush()
        rows = await pool.fetch("SELECT what FROM set_aside WHERE what LIKE '%' || $1 || '%'", tag)
        assert not rows, f"the deposed leader set aside {[r['what'] for r in rows]}"
        assert a.stored_seq == 0 and a._refused and a._refused_messages  # held: never acked by A
        assert a_lease.refused == 2

        b = await stage_of(pool, city, b_lease)
        b._refused, b._refused_messages, b._step_seq = list(refused), [message], 7
        await b.flush()
        assert b.stored_seq == 7 and b_lease.refused == 0
        rows = await pool.fetch("SELECT what FROM set_aside WHERE what LIKE '%' || $1 || '%' ORDER BY id", tag)
        assert len(rows) == 2
    finally:
        await a_lease.close()
        await b_lease.close()
        await pool.close()
