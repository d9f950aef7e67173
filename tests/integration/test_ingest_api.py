"""MQTT -> ingest -> PostgreSQL -> REST API, over the real broker and database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.support.corpus import malformed_cases, small_jpeg
from tests.support.mqtt import Publisher, iso, unique_id
from tests.support.services import IngestProcess

pytestmark = pytest.mark.integration


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_ready(api: httpx.AsyncClient, ingest: IngestProcess, mqtt_port: int) -> Publisher:
    """Publish probes until the worker is demonstrably subscribed (a probe device appears)."""
    pub = Publisher(mqtt_port)
    probe = unique_id("probe")

    async def seen() -> bool:
        assert ingest.alive(), ingest.log.read_text()
        pub.publish(f"ioc/v1/bts/{probe}/status", {"state": "online"})
        return (await api.get(f"/api/devices/{probe}")).status_code == 200

    await eventually(seen, 30, "ingest worker to subscribe")
    return pub


async def test_publish_then_read_through_api(api: httpx.AsyncClient, ingest: IngestProcess, mqtt_port: int) -> None:
    pub = await wait_ready(api, ingest, mqtt_port)
    dev, cam = unique_id("T"), unique_id("C")
    t0 = time.time() - 60
    for i in range(20):
        pub.publish(f"ioc/v1/traffic/{dev}/telemetry",
                    {"ts": iso(t0 + i), "seq": i, "metrics": {"speed_kmh": 40.0 + i, "occupancy_pct": 10.0},
                     "lat": 20.86, "lon": 106.68})
    # A gateway batch and an exact duplicate (as a redelivery would be): neither adds extra rows.
    pub.publish(f"ioc/v1/traffic/{dev}/telemetry",
                [{"ts": iso(t0 + 20), "seq": 20, "metrics": {"speed_kmh": 60.0}},
                 {"ts": iso(t0 + 21), "seq": 21, "metrics": {"speed_kmh": 61.0}}])
    pub.publish(f"ioc/v1/traffic/{dev}/telemetry", {"ts": iso(t0 + 5), "seq": 5,
                                                    "metrics": {"speed_kmh": 45.0, "occupancy_pct": 10.0}})
    pub.publish(f"ioc/v1/traffic/{dev}/status", {"ts": iso(t0), "state": "degraded", "reason": "lane 2 loop"})
    pub.publish(f"ioc/v1/traffic/{dev}/event", {"ts": iso(t0 + 1), "type": "loop_fault", "severity": "minor"})
    pub.publish(f"ioc/v1/camera/{cam}/snapshot", small_jpeg(7, 96, 64))
    pub.wait_all()

    async def all_points() -> bool:
        r = await api.get("/api/telemetry", params={"device_id": dev, "metric": "speed_kmh",
                                                     "start": iso(t0 - 1)})
        return r.status_code == 200 and len(r.json()) == 22

    await eventually(all_points, what="22 speed points")
    speeds = (await api.get("/api/telemetry", params={"device_id": dev, "metric": "speed_kmh",
                                                       "start": iso(t0 - 1)})).json()
    assert [p["value"] for p in speeds] == [40.0 + i for i in range(20)] + [60.0, 61.0]
    occ = (await api.get("/api/telemetry", params={"device_id": dev, "metric": "occupancy_pct",
                                                    "start": iso(t0 - 1)})).json()
    assert len(occ) == 20

    detail = (await api.get(f"/api/devices/{dev}")).json()
    assert detail["kind"] == "traffic" and detail["state"] == "degraded" and detail["state_reason"] == "lane 2 loop"
    assert (detail["lat"], detail["lon"]) == (20.86, 106.68)

    async def newest_values() -> bool:  # the worker writes them coalesced, every IOC_INGEST__LATEST_EVERY_S
        latest = {v["metric"]: v["value"] for v in (await api.get(f"/api/devices/{dev}")).json()["latest"]}
        assert set(latest) <= {"speed_kmh", "occupancy_pct"}
        return latest == {"speed_kmh": 61.0, "occupancy_pct": 10.0}

    await eventually(newest_values, timeout=10, what="the newest value of each metric (61.0 and 10.0)")

    buckets = (await api.get("/api/telemetry", params={"device_id": dev, "metric": "speed_kmh",
                                                        "start": iso(t0 - 600), "bucket": "1h"})).json()
    assert sum(b["count"] for b in buckets) == 22
    assert max(b["max"] for b in buckets) == 61.0

    await eventually(lambda: _device_exists(api, cam), what="camera registered")
    listing = (await api.get("/api/devices", params={"kind": "camera", "limit": 10000})).json()
    assert cam in {d["device_id"] for d in listing}

    bad = await api.get("/api/telemetry", params={"device_id": dev, "bucket": "fortnight"})
    assert bad.status_code == 422 and "bucket" in bad.json()["detail"]
    pub.close()


async def _device_exists(api: httpx.AsyncClient, device_id: str) -> bool:
    return (await api.get(f"/api/devices/{device_id}")).status_code == 200


async def test_malformed_corpus_is_quarantined_and_good_messages_survive(
        api: httpx.AsyncClient, ingest: IngestProcess, mqtt_port: int) -> None:
    pub = await wait_ready(api, ingest, mqtt_port)
    marker = unique_id("bad")
    good = unique_id("G")
    cases = malformed_cases()
    for i, (_, topic, payload, _) in enumerate(cases):
        # Interleave good readings so we can see they are unaffected by their bad neighbours.
        pub.publish(f"ioc/v1/traffic/{good}/telemetry", {"ts": iso(time.time() - 100 + i), "metrics": {"v": i}})
        pub.publish(topic.format(dev=marker), payload)
    pub.publish(f"ioc/v1/traffic/{good}/telemetry", {"ts": iso(time.time() - 1), "metrics": {"v": -1}})
    pub.wait_all()

    async def good_all_stored() -> bool:
        r = await api.get("/api/telemetry", params={"device_id": good, "start": iso(time.time() - 200)})
        return r.status_code == 200 and len(r.json()) == len(cases) + 1

    await eventually(good_all_stored, what="good readings")
    assert ingest.alive()

    expected = {(topic.format(dev=marker), reason) for _, topic, _, reason in cases}

    async def quarantined() -> list[dict[str, object]]:
        rows = (await api.get("/api/quarantine", params={"limit": 1000})).json()
        return [r for r in rows if (r["topic"], r["reason"]) in expected]

    async def all_quarantined() -> bool:
        return {(r["topic"], r["reason"]) for r in await quarantined()} == expected

    await eventually(all_quarantined, what="every malformed case quarantined with its reason")
    for row in await quarantined():
        assert row["detail"] and row["payload_size"] > 0
        # Payloads are kept truncated at the bound (64 KiB by default), never whole when oversize.
        kept = row["payload_text"] or ""
        assert len(kept) <= 64 * 1024 or row["payload_base64"] is not None
    pub.close()
