"""One device sending nothing but large bad messages: every one is quarantined, but past the device's budget
only its head is kept (ingest/quarantine_budget.py), through real Mosquitto, ingest and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.test_ingest_api import eventually, wait_ready
from tests.support.mqtt import unique_id
from tests.support.services import IngestProcess

pytestmark = pytest.mark.integration

COUNT, SIZE = 40, 60_000  # 2.4 MB of rejected payloads from one device; the default budget is 1 MiB a minute


async def test_a_device_flooding_bad_messages_keeps_only_heads_past_its_budget(
        api: httpx.AsyncClient, ingest: IngestProcess, mqtt_port: int) -> None:
    pub = await wait_ready(api, ingest, mqtt_port)
    evil, fine = unique_id("EVIL"), unique_id("FINE")
    for i in range(COUNT):  # each one different (identical ones are kept once: a redelivery is not news)
        pub.publish(f"ioc/v1/bts/{evil}/telemetry", f"{i:05d}".encode() + b"x" * (SIZE - 5))  # not JSON
    pub.publish(f"ioc/v1/bts/{fine}/telemetry", b"y" * SIZE)  # another device's budget is its own
    pub.wait_all()

    async def rows() -> list[dict[str, object]]:
        got = (await api.get("/api/quarantine", params={"limit": 1000})).json()
        return [r for r in got if evil in str(r["topic"]) or fine in str(r["topic"])]

    async def all_there() -> bool:
        return len(await rows()) == COUNT + 1

    await eventually(all_there, what="every bad message quarantined")
    kept = {r["topic"]: [] for r in await rows()}  # type: dict[object, list[int]]
    for r in await rows():
        assert r["payload_size"] == SIZE and r["reason"] == "not_json"
        kept[r["topic"]].append(len(str(r["payload_text"] or "")))
    evil_kept = kept[f"ioc/v1/bts/{evil}/telemetry"]
    whole = sum(k == SIZE for k in evil_kept)
    assert 10 <= whole <= 18, evil_kept  # 1 MiB of whole payloads (plus what refilled meanwhile)
    assert sorted(evil_kept)[:COUNT - whole] == [256] * (COUNT - whole)
    assert kept[f"ioc/v1/bts/{fine}/telemetry"] == [SIZE]
    pub.close()
