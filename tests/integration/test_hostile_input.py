"""No single message stops anything: a burst of hostile messages of every class, on every channel, through a
real `ioc serve --ingest` (ingest worker, live hub, analytics and alerts in one process) and real Mosquitto.

Afterwards: good messages sent after the burst are all stored, the worker and the API are alive and ready,
nothing waits unacknowledged, a new screen still gets its snapshot, and every hostile message is either
stored (where it is valid, its text made safe) or in the quarantine with its reason.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import websockets

from tests.conftest import ingest_env
from tests.support.auth import make_token_sync
from tests.support.corpus import hostile_accepted_cases, huge_header_jpeg, malformed_cases, now_ms, small_jpeg
from tests.support.mqtt import Publisher, unique_id
from tests.support.services import ServeProcess, wait_until

pytestmark = pytest.mark.integration


def hostile_messages(tag: str) -> tuple[list[tuple[str, bytes, str]], list[tuple[str, bytes]]]:
    """(topic, payload, reason) to be quarantined and (topic, payload) to be stored, each device its own id."""
    refused: list[tuple[str, bytes, str]] = []
    for i, (_, topic, payload, reason) in enumerate(malformed_cases()):
        refused.append((topic.format(dev=f"{tag}-r{i}"), payload, reason))
    ts = now_ms()
    nested = b"[" * 50_000 + b"]" * 50_000  # deeper than any parser's recursion limit
    refused += [
        (f"ioc/v1/bts/{tag}-deep/telemetry", nested, "not_json"),
        (f"ioc/v1/camera/{tag}-bomb2/snapshot", huge_header_jpeg(8192, 8192), "image_too_large"),
        (f"ioc/v1/traffic/{tag}-surr/telemetry", b'{"ts": "2026-01-01T00:00:00\\ud800Z", "metrics": {"a": 1}}',
         "bad_ts"),
    ]
    stored = [(topic.format(dev=f"{tag}-s{i}"), payload)
              for i, (_, topic, payload) in enumerate(hostile_accepted_cases())]
    stored += [
        # NaN forces the lenient parser, which keeps a 100-digit integer: orjson cannot write it back
        (f"ioc/v1/bts/{tag}-bigint/event",
         b'{"ts": %d, "type": "door_open", "detail": {"n": %s, "x": NaN}}' % (ts, b"9" * 100)),
        (f"ioc/v1/camera/{tag}-cam/snapshot", small_jpeg(7, 640, 360)),
    ]
    return refused, stored


async def test_a_burst_of_hostile_messages_stops_nothing(database_url: str, mqtt_port: int, artifacts: Path) -> None:
    tag = unique_id("hostile")
    env = ingest_env(database_url, mqtt_port, IOC_MQTT__CLIENT_ID=f"hostile-{uuid.uuid4().hex[:6]}",
                     IOC_INGEST__STALL_S="5", IOC_TEST_ADMIN_TOKEN=make_token_sync(database_url, "admin"))
    refused, stored = hostile_messages(tag)
    greedy = f"{tag}-greedy"  # invents a new metric name with every reading
    with ServeProcess(env, artifacts / "serve.log") as srv:
        pub = Publisher(mqtt_port)
        try:
            for topic, payload, _ in refused:
                pub.publish(topic, payload)
            for topic, payload in stored:
                pub.publish(topic, payload)
            for k in range(140):
                pub.publish(f"ioc/v1/traffic/{greedy}/telemetry", {"ts": now_ms(), "metrics": {f"m{k}": k}})
            good = f"{tag}-good"
            for k in range(200):
                pub.publish(f"ioc/v1/traffic/{good}/telemetry", {"ts": now_ms() - 1000 + k, "seq": k,
                                                                  "metrics": {"speed_kmh": 40 + k % 7}})
            pub.wait_all()
        finally:
            pub.close()

        conn = await asyncpg.connect(database_url)
        try:
            async def good_rows() -> int:
                return int(await conn.fetchval(
                    "SELECT count(DISTINCT seq) FROM telemetry WHERE device_id = $1", good))

            deadline = time.monotonic() + 60
            while await good_rows() < 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert await good_rows() == 200, "good messages after the burst must all be stored"

            for topic, _, reason in refused:
                found = await conn.fetch("SELECT reason, detail FROM quarantine WHERE topic = $1", topic)
                assert found and {r["reason"] for r in found} == {reason}, (topic, [dict(r) for r in found])
            assert not await conn.fetchval(
                "SELECT count(*) FROM quarantine WHERE topic LIKE $1 AND reason = 'internal_error'", f"%{tag}%")
            for topic, _ in stored:
                device = topic.split("/")[3]
                assert await conn.fetchval("SELECT count(*) FROM devices WHERE device_id = $1", device) == 1, topic
                assert not await conn.fetchval("SELECT count(*) FROM quarantine WHERE topic = $1", topic), topic
            metrics = await conn.fetchval("SELECT count(DISTINCT metric) FROM telemetry WHERE device_id = $1", greedy)
            capped = await conn.fetchval("SELECT count(*) FROM quarantine WHERE topic = $1 AND reason = $2",
                                         f"ioc/v1/traffic/{greedy}/telemetry", "too_many_metrics")
            assert (metrics, capped) == (128, 12)
        finally:
            await conn.close()

        # alive, ready, nothing waiting unacknowledged
        wait_until(lambda: srv.get("/readyz").get("status") == "ready", 20, 0.2, what="ready after the burst")
        assert srv.get("/healthz") == {"status": "ok"}
        # a new screen still gets its snapshot, with the devices whose text was made safe
        async with websockets.connect(srv.ws_url("/ws/live"), additional_headers=srv.auth_headers()) as ws:
            frames: list[dict[str, Any]] = json.loads(await asyncio.wait_for(ws.recv(), 10))
            snapshot = frames[0] if isinstance(frames, list) else frames
            assert snapshot["type"] == "snapshot"
            reasons = {d["device_id"]: d.get("state_reason") for d in snapshot["devices"]}
            assert reasons.get(f"{tag}-s2") == "fan \ufffd broken"
