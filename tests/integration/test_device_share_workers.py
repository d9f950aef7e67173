"""A device's byte share holds for the deployment, not per ingest worker (ingest/members.py): two real ``ioc ingest``
workers on one shared subscription of the real Mosquitto split each device's messages, and each grants a device half
its share. Before, each granted a whole share: a flooding device had two."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.conftest import ingest_env
from tests.support.corpus import now_ms
from tests.support.mqtt import Publisher, unique_id
from tests.support.services import IngestProcess, wait_until

pytestmark = pytest.mark.integration

RATE, BURST = 20_000, 600_000  # the deployment-wide share: bytes a second, and at once
SIZE, FLOOD = 20_000, 100  # one device's flood: 2 MB, over three times its burst
COST = SIZE + 256  # ingest/device_rate.py: MESSAGE_COST


async def _counts(dsn: str, device: str) -> tuple[int, dict[str, int]]:
    conn = await asyncpg.connect(dsn)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM device_events WHERE device_id = $1", device)
        kept = dict(await conn.fetch("SELECT reason, count(*) FROM quarantine WHERE topic = $1 GROUP BY 1",
                                     f"ioc/v1/bts/{device}/event"))
        return int(stored), {str(k): int(v) for k, v in kept.items()}
    finally:
        await conn.close()


def _event(ts: int, size: int) -> bytes:
    body = orjson.dumps({"ts": ts, "type": "door_open", "severity": "info", "detail": {"pad": ""}})
    return body.replace(b'"pad":""', b'"pad":"' + b"x" * (size - len(body)) + b'"')


def test_two_workers_of_one_share_group_grant_a_device_one_share_between_them(
        database_url: str, mqtt_port: int, artifacts: Path) -> None:
    env = ingest_env(database_url, mqtt_port, IOC_INGEST__DEVICE_BYTES_PER_S=str(RATE),
                     IOC_INGEST__DEVICE_BURST_BYTES=str(BURST))
    logs = [artifacts / f"ingest-{i}.log" for i in range(2)]
    for log in logs:
        log.unlink(missing_ok=True)
    workers = [IngestProcess(env, f"share-{i}-{uuid.uuid4().hex[:6]}", log) for i, log in enumerate(logs)]
    for worker in workers:
        worker.start()
    try:
        # each counts the other (member rows renewed every 5 s)
        wait_until(lambda: all(b"2 ingest workers in share group" in log.read_bytes() for log in logs), 20, 0.2,
                   what="both workers count two members")
        evil, fine = unique_id("SHARE-EVIL"), unique_id("SHARE-FINE")
        pub = Publisher(mqtt_port)
        began, ts = time.monotonic(), now_ms()
        for i in range(FLOOD):
            pub.publish(f"ioc/v1/bts/{evil}/event", _event(ts - i, SIZE))
            if i % 20 == 0:  # a well-behaved device between the flood's messages
                pub.publish(f"ioc/v1/bts/{fine}/event", _event(ts - i, 300))
        pub.wait_all()
        sent_in = time.monotonic() - began

        def accounted() -> bool:
            stored, kept = asyncio.run(_counts(database_url, evil))
            return stored + sum(kept.values()) >= FLOOD
        wait_until(accounted, 20, 0.2, what="every message of the flood stored or quarantined")
        pub.close()
        window = time.monotonic() - began
        stored, kept = asyncio.run(_counts(database_url, evil))
        print(f"share: {stored} of {FLOOD} stored, {kept}, sent in {sent_in:.2f} s, window {window:.2f} s")
        assert stored + sum(kept.values()) == FLOOD and set(kept) <= {"device_rate"}, (stored, kept)
        one_share = (BURST + RATE * window) / COST
        assert BURST // COST - 4 <= stored <= one_share + 3, (stored, one_share)  # two shares: ~58
        assert asyncio.run(_counts(database_url, fine)) == (5, {})
    finally:
        for worker in workers:
            worker.stop()
