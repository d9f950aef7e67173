"""Wiring: build the long-running parts of a process from :class:`~ioc.settings.Settings`."""

from __future__ import annotations

import asyncio
import logging
import signal

import asyncpg

from ingest.contract import SUBSCRIPTION
from ingest.handling import ParsedSink
from ingest.mqtt_session import SessionOptions
from ingest.worker import IngestWorker
from ioc.settings import Settings
from storage.db import Backend
from storage.maintenance import run_maintenance
from storage.migrate import upgrade

logger = logging.getLogger(__name__)

#: The ingest workers' share group before `ioc devices services` made it a secret (any device could join it).
LEGACY_SHARE_GROUP = "ioc-ingest"


def session_options(settings: Settings, client_id: str | None = None) -> SessionOptions:
    """MQTT session options for an ingest worker."""
    mq = settings.mqtt
    topic = f"$share/{mq.share_group}/{SUBSCRIPTION}" if mq.share_group else SUBSCRIPTION
    # Workers moved off the old, guessable group (docs/broker-security.md) leave it from their resumed session.
    legacy = f"$share/{LEGACY_SHARE_GROUP}/{SUBSCRIPTION}"
    user, password = settings.mqtt_credentials
    return SessionOptions(
        host=settings.mqtt_host, port=settings.mqtt_port, client_id=client_id or mq.client_id,
        subscriptions=(topic,), keepalive_s=mq.keepalive_s, session_expiry_s=mq.session_expiry_s,
        reconnect_min_s=mq.reconnect_min_s, reconnect_max_s=mq.reconnect_max_s,
        username=user, password=password, tls=settings.mqtt_tls,
        receive_maximum=min(65535, settings.ingest.max_pending_messages),
        unsubscribe=(legacy,) if topic != legacy else ())


def build_worker(settings: Settings, sinks: tuple[ParsedSink, ...] = (),
                 client_id: str | None = None) -> IngestWorker:
    """An ingest worker configured from settings."""
    return IngestWorker(settings.database_url, session_options(settings, client_id), settings.ingest,
                        settings.storage, sinks=sinks)


async def run_until_signal(worker: IngestWorker, settings: Settings | None = None) -> None:
    """Run ``worker`` until SIGINT/SIGTERM, then let it drain. With ``IOC_PARTITION__NATS_URL`` set, committed
    readings also go onto the partitioned analytics stream before they are acked."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    if settings is None or not settings.partition.nats_url:
        await worker.run()
        return
    import nats

    from ioc.geo import City
    from ioc.partition.feed import StreamFeed
    from ioc.partition.stream import Publisher, ensure_stream

    nc = await nats.connect(settings.partition.nats_url, name=f"ioc-ingest-{worker.session.options.client_id}")
    pool = await asyncpg.create_pool(settings.database_url, min_size=0, max_size=1)
    try:
        js = nc.jetstream()
        await ensure_stream(js, settings.partition.stream, settings.partition.max_age_s)
        worker.after_commit = StreamFeed(Publisher(js, settings.partition.partitions, settings.partition.stream),
                                         City.load(settings.live.city_file).district_of, pool)
        await worker.run()
    finally:
        await pool.close()
        await nc.close()


async def run_partition_worker(settings: Settings, worker_id: str) -> None:
    """``ioc analytics-worker``: numeric analytics for a fair share of the stream's partitions, until a signal."""
    from ioc.partition.worker import PartitionWorker

    if not settings.partition.nats_url:
        raise SystemExit("set IOC_PARTITION__NATS_URL (e.g. nats://127.0.0.1:4222)")
    worker = PartitionWorker(settings.database_url, settings.partition.nats_url, settings.partition.partitions,
                             worker_id, stream=settings.partition.stream, ranges=settings.analytics.metric_ranges,
                             rebalance_s=settings.partition.rebalance_s, lease_ttl_s=settings.partition.lease_ttl_s,
                             state_every_s=settings.analytics.series_state_every_s,
                             full_every_s=settings.analytics.series_state_full_every_s)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()


async def db_upgrade(settings: Settings) -> tuple[Backend, list[str]]:
    """Apply migrations and run housekeeping once (creates the first partitions on PostgreSQL)."""
    conn = await asyncpg.connect(settings.database_url,
                                 statement_cache_size=settings.storage.statement_cache_size)
    try:
        backend, applied = await upgrade(conn, settings.storage)
        await run_maintenance(conn, backend, settings.storage)
        return backend, applied
    finally:
        await conn.close()
