"""HA red team: a process that loses its lease mid-flight (real Mosquitto and PostgreSQL).

Embedded ingest (``ioc serve --ingest``, the demo): the worker's acks wait for the brain's stages
(ioc/cluster/embedded.py). When the lease went away under them, the gate was untied and acked everything its
worker had committed, also what the stages had been handed and not stored: those alarms were never alerts.
The app runs in this process (its lifespan, as ``ioc serve --ingest`` runs it) on a private broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from ioc.alerts.model import Changes
from ioc.api.app import create_app
from ioc.cluster import actions
from ioc.cluster.config import ClusterConfig
from ioc.geo import City
from ioc.settings import Settings
from storage.config import StorageConfig
from storage.db import create_pool
from tests.conftest import create_database, own_database
from tests.integration.test_cluster_actions import _alarm as alarm
from tests.integration.test_cluster_actions import _lease as lease_of
from tests.integration.test_cluster_actions import _observe as observe
from tests.integration.test_cluster_actions import _stage as stage_of
from tests.integration.test_embedded_ingest_acks import (
    alarms,
    embedded_settings,
    leading,
    left_at_broker,
    stored_alerts,
)
from tests.support.mqtt import Publisher
from tests.support.services import private_mosquitto, private_postgres
from tests.support.tasks import until

pytestmark = pytest.mark.integration
until_soon = functools.partial(until, every=0.02)
COUNT = 6


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    yield from own_database()


def fast_lease(database_url: str, port: int) -> Settings:
    """Embedded settings with a lease that is renewed and taken quickly (the test waits less)."""
    settings = embedded_settings(database_url, port)
    settings.cluster = ClusterConfig(lease_ttl_s=3.0, renew_every_s=0.5, acquire_every_s=0.2)
    return settings


async def lease_sql(database_url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def alerts_within(database_url: str, tag: str, timeout: float, count: int = COUNT) -> dict[str, int]:
    """The tag's stored alerts per device, once all ``count`` are there or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while len(stored := await stored_alerts(database_url, tag)) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return stored


async def alarms_held_by_the_stage(app: Any, pub: Publisher, tag: str) -> None:
    """Publish COUNT alarms while the alert step waits: committed by the worker, handed to the stage, not stored."""
    worker = app.state.worker
    for topic, payload in alarms(tag, COUNT):
        pub.publish(topic, payload)
    pub.wait_all()
    await until_soon(
        lambda: worker._pending == COUNT and all(b.done for b in worker._order),
        10,
        "the alarms committed, their acks waiting for the stage",
    )


@contextlib.asynccontextmanager
async def embedded_leader(database_url: str, port: int) -> AsyncIterator[tuple[Any, Publisher, Settings]]:
    """``ioc serve --ingest`` in this process on the private broker, leading; a publisher to it."""
    settings = fast_lease(database_url, port)
    app = create_app(settings, embed_ingest=True)
    pub = Publisher(port)
    try:
        async with app.router.lifespan_context(app):
            await leading(app)
            yield app, pub, settings
    finally:
        pub.close()


def lone_all_settings(database_url: str, port: int, lease: str, **cluster: Any) -> Settings:
    settings = fast_lease(database_url, port)
    settings.cluster = ClusterConfig(lease_name=lease, lease_ttl_s=3.0, renew_every_s=0.5, acquire_every_s=0.2,
                                     heartbeat_s=0.5, **cluster)
    return settings


async def run_lone_all(settings: Settings) -> None:
    """Start an ``ioc serve`` of role ``all`` (ingest elsewhere), wait until it leads with its brain session
    connected, and stop it cleanly."""
    app = create_app(settings, role="all")
    async with app.router.lifespan_context(app):
        await until(lambda: app.state.alerts is not None and app.state.alerts.loaded, 20, "the leader")
        brain = app.state.node.brain
        await until(lambda: brain.input is not None and brain.input.session.is_connected, 10, "its session")


async def alerts_after_a_start(settings: Settings, database_url: str, tag: str, timeout: float) -> dict[str, int]:
    """Start an ``ioc serve`` of role ``all`` again: the tag's alerts once its stages lead (within ``timeout``)."""
    app = create_app(settings, role="all")
    async with app.router.lifespan_context(app):
        await until(lambda: app.state.alerts is not None and app.state.alerts.loaded, 20, "back")
        return await alerts_within(database_url, tag, timeout, count=3)


async def test_alarms_handed_to_stages_that_lose_the_lease_are_alerts_under_the_next_epoch(database_url: str) -> None:
    """The lease row is freed under the leader (an operator, a restored backup: the renewal is refused) while its
    alert step waits with 6 alarms committed by the worker and not stored. The process steps down and, alone,
    takes the lease again: the 6 alarms must come again to its new stages and be alerts, once each, and the
    broker must hold nothing for the worker's session. (Before: all 6 acked at the step-down, no alert.)"""
    tag = uuid.uuid4().hex[:8]
    with private_mosquitto() as port:
        async with embedded_leader(database_url, port) as (app, pub, settings):
            worker, brain, stage = app.state.worker, app.state.node.brain, app.state.alerts
            epoch = brain.epoch
            async with stage._lock:  # the step waits: nothing of the alarms is stored
                await alarms_held_by_the_stage(app, pub, tag)
                await lease_sql(
                    database_url,
                    "UPDATE cluster_lease SET holder = NULL, expires_at = now() WHERE name = $1",
                    settings.cluster.lease_name,
                )
                await until_soon(
                    lambda: (
                        brain.epoch is not None
                        and brain.epoch > epoch
                        and app.state.alerts is not None
                        and app.state.alerts is not stage
                    ),
                    15,
                    "the lease lost and taken again",
                )
            stored = await alerts_within(database_url, tag, 10.0)
            assert len(stored) == COUNT, f"{COUNT - len(stored)} of {COUNT} alarms acked and never alerts"
            assert set(stored.values()) == {1}
            await until_soon(lambda: worker._pending == 0, 10, "every message acked")
            assert worker.gate.redeliveries == 1  # the broker sent them again, to the stages of epoch + 1
        assert left_at_broker(port, settings.mqtt.client_id) == []


async def test_a_process_whose_lease_another_takes_lets_its_hold_go(database_url: str) -> None:
    """The same, but another process takes the lease (a row naming it, valid 4 s): its leader never reads this
    worker's messages, so holding them would only stall this worker's ingest. The hold is let go once the lease
    is seen held elsewhere (the alarms are acked without alerts: the documented limit of several embedded
    processes), and the worker reads and acks again while the other leads."""
    tag = uuid.uuid4().hex[:8]
    with private_mosquitto() as port:
        async with embedded_leader(database_url, port) as (app, pub, settings):
            worker, brain, stage = app.state.worker, app.state.node.brain, app.state.alerts
            async with stage._lock:
                await alarms_held_by_the_stage(app, pub, tag)
                await lease_sql(
                    database_url,
                    "UPDATE cluster_lease SET holder = 'another-process', "
                    "epoch = epoch + 1, expires_at = now() + interval '4 s' WHERE name = $1",
                    settings.cluster.lease_name,
                )
                await until_soon(lambda: brain.epoch is None and brain.lease.elsewhere, 5, "another process leading")
            await until_soon(lambda: worker._pending == 0, 3, "the held messages let go while another leads")
            assert brain.epoch is None
            for topic, payload in alarms(tag + "b", 2):
                pub.publish(topic, payload)
            pub.wait_all()
            await until_soon(
                lambda: worker._pending == 0 and worker.session.messages_in >= COUNT + 2,
                3,
                "later messages stored and acked while another leads",
            )
            await until_soon(lambda: brain.epoch is not None, 10, "the lease taken again once it expired")


async def test_an_action_taken_before_the_lease_row_vanished_is_applied_by_the_next_leader(database_url: str) -> None:
    """The lease row is deleted (an operator clearing a "stuck" lease) while the leader of epoch 5 has taken an
    officer's acknowledgement and not stored it. The row comes back at epoch 0, so the next leader led epoch 1,
    and its action worker took the action, taken by epoch 5, for one of its own (``epoch >= mine``): never
    applied, the officer answered 503. Epochs must never go back: the next leader's epoch is above 5."""
    cfg = ClusterConfig(lease_name=f"redteam-{uuid.uuid4().hex[:8]}", lease_ttl_s=30.0, renew_every_s=1.0)
    pool = await create_pool(database_url, StorageConfig(), max_size=4)
    city = City.load()
    old, new = lease_of(database_url, cfg, "old"), lease_of(database_url, cfg, "new")
    device = f"BTS-{uuid.uuid4().hex[:8]}"
    try:
        await lease_sql(database_url, "INSERT INTO cluster_lease (name, epoch) VALUES ($1, 4)", cfg.lease_name)
        assert await old.acquire_once() and old.epoch == 5  # four leaders before it
        first = await stage_of(pool, city, old)
        await observe(first, [alarm(device, datetime.now(UTC))])
        (inc,) = [i for i in first.engine.incidents.values() if device in first.incident_view(i)["devices"]]
        fenced = first.guard
        assert fenced is not None

        async def row_deleted_then_fenced(conn: Any, ch: Changes) -> None:
            if ch.actions:  # applied in memory, not stored: the row vanishes and another process leads
                await lease_sql(database_url, "DELETE FROM cluster_lease WHERE name = $1", cfg.lease_name)
                assert await new.acquire_once()
            await fenced(conn, ch)

        first.guard = row_deleted_then_fenced
        replica = SimpleNamespace(
            alerts=None, pool=pool, process_id="api-redteam", cluster=ClusterConfig(action_timeout_s=15.0)
        )
        answer = asyncio.create_task(actions.apply(replica, "ack", inc.id, "officer-an", "on my way"))
        w_old = actions.ActionWorker(database_url, pool, first, int(old.epoch or 0))
        while not await w_old.run_once():
            await asyncio.sleep(0.05)
        assert new.epoch is not None and new.epoch > 5, f"epoch went back to {new.epoch}"
        second = await stage_of(pool, city, new)
        w_new = actions.ActionWorker(database_url, pool, second, new.epoch)
        assert await w_new.run_once() == 1, "the action taken by the lost epoch is not taken again"
        view = await asyncio.wait_for(answer, 15)
        assert view["state"] == "acknowledged"
        await second.act("resolve", inc.id, "officer-an", "test over")
    finally:
        await old.close()
        await new.close()
        await pool.close()


async def test_alarms_in_flight_when_the_database_restarts_under_an_embedded_leader_are_alerts(
    database_url: str,
) -> None:
    """PostgreSQL (a private one) stops for longer than the lease's life while 6 alarms are committed and the
    alert step has not stored them: the lone process cannot renew, steps down, and takes the lease again once the
    database is back. The 6 alarms must be alerts once each, nothing left at the broker."""
    tag = uuid.uuid4().hex[:8]
    with private_postgres() as pg, private_mosquitto() as port:
        dsn = await create_database(pg.dsn)
        settings = fast_lease(dsn, port)
        app = create_app(settings, embed_ingest=True)
        pub = Publisher(port)
        async with app.router.lifespan_context(app):
            await leading(app)
            worker, brain, stage = app.state.worker, app.state.node.brain, app.state.alerts
            epoch = brain.epoch
            async with stage._lock:
                await alarms_held_by_the_stage(app, pub, tag)
                await asyncio.to_thread(pg.stop)
            await until(lambda: brain.epoch is None, 10, "the leader stepped down: the lease not renewed")
            await asyncio.to_thread(pg.start)
            await until(lambda: brain.epoch is not None and brain.epoch > epoch, 15, "the lease taken again")
            stored = await alerts_within(dsn, tag, 10.0)
            assert len(stored) == COUNT, f"{COUNT - len(stored)} of {COUNT} alarms acked and never alerts"
            assert set(stored.values()) == {1}
            await until_soon(lambda: worker._pending == 0, 10, "every message acked")
        pub.close()
        assert left_at_broker(port, settings.mqtt.client_id) == []


async def test_a_clean_handover_between_two_all_processes_keeps_the_brain_session(database_url: str) -> None:
    """Two ``ioc serve`` processes of the default role ``all`` (no embedded ingest: the brain's own session). The
    leader stops cleanly while 3 alarms it read are not stored (its alert step waits): it acks what settles in
    3 s and leaves the rest at the broker for the next leader. But a lone ``all`` process ends its broker session
    at a clean stop, and so did this one with a standby beside it: the standby started a fresh session and the 3
    alarms were never alerts. With another candidate alive for the same lease, the session is kept."""
    tag = uuid.uuid4().hex[:8]
    with private_mosquitto() as port:
        settings = lone_all_settings(database_url, port, f"all-{tag}")
        pub = Publisher(port)
        first, second = create_app(settings, role="all"), create_app(settings, role="all")
        leading_cm: Any = first.router.lifespan_context(first)
        await leading_cm.__aenter__()  # the leader; its stop below is the clean handover
        try:
            await until(lambda: first.state.alerts is not None and first.state.alerts.loaded, 20, "the leader")
            brain = first.state.node.brain
            await until(lambda: brain.input is not None and brain.input.session.is_connected, 10, "its session")
            async with second.router.lifespan_context(second):
                stage = first.state.alerts
                await stage._lock.acquire()  # the step waits: the alarms stay unstored through the drain
                for topic, payload in alarms(tag, 3):
                    pub.publish(topic, payload)
                pub.wait_all()
                await until_soon(lambda: brain.input.seq >= 3, 10, "the alarms read by the leader")
                await asyncio.sleep(1.0)  # both heartbeats written
                cm, leading_cm = leading_cm, None
                await cm.__aexit__(None, None, None)
                await until(lambda: second.state.alerts is not None and second.state.alerts.loaded, 10, "takeover")
                stored = await alerts_within(database_url, tag, 10.0, count=3)
                assert len(stored) == 3, f"{3 - len(stored)} of 3 alarms read by the old leader never alerts"
        finally:
            if leading_cm is not None:
                await leading_cm.__aexit__(None, None, None)
        pub.close()


async def test_alarms_published_while_a_lone_all_process_restarts_are_alerts(database_url: str) -> None:
    """A lone ``ioc serve`` (role ``all``, ingest elsewhere) is stopped cleanly and started again, as for an upgrade.
    It used to end the brain's broker session at the stop (nobody would resume it, and the broker would queue
    for it an hour), so the 3 alarms published while it was down were stored by ingest and never alerts. It now
    leaves the session to expire after ``brain_restart_grace_s``: the restarted process resumes it."""
    tag = uuid.uuid4().hex[:8]
    with private_mosquitto() as port:
        settings = lone_all_settings(database_url, port, f"lone-{tag}")
        await run_lone_all(settings)
        with contextlib.closing(Publisher(port)) as pub:  # nobody reads the brain's topics now
            for topic, payload in alarms(tag, 3):
                pub.publish(topic, payload)
            pub.wait_all()
        stored = await alerts_after_a_start(settings, database_url, tag, 10.0)
        assert len(stored) == 3, f"{3 - len(stored)} of 3 alarms published during the restart never alerts"


async def test_a_lone_all_process_leaves_no_queue_past_its_restart_grace(database_url: str) -> None:
    """The other side of the grace: a lone process that does not come back within it leaves the broker nothing
    to queue for it (the expiry set at the DISCONNECT holds; the connection asked for an hour)."""
    tag = uuid.uuid4().hex[:8]
    with private_mosquitto() as port:
        settings = lone_all_settings(database_url, port, f"gone-{tag}", brain_restart_grace_s=1)
        await run_lone_all(settings)
        await asyncio.sleep(3.0)  # past the grace
        with contextlib.closing(Publisher(port)) as pub:
            for topic, payload in alarms(tag, 3):
                pub.publish(topic, payload)
            pub.wait_all()
        stored = await alerts_after_a_start(settings, database_url, tag, 3.0)
        assert not stored, f"{len(stored)} alarms queued for a session past its grace"
