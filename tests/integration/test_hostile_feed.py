"""Each hostile message is followed by a good one, through a real `ioc serve --ingest` and real Mosquitto: after
every hostile message the next good reading is stored and on a screen's feed, and a good camera's pictures sent
between hostile JPEGs are still analysed. Then a screen sends hostile WebSocket frames (binary frames cut its
connection before H4's fix) and an action flood: it stays connected, and the other screen's feed goes on.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import cv2
import numpy as np
import pytest
import websockets

from tests.conftest import ingest_env
from tests.support.auth import make_token_sync
from tests.support.corpus import hostile_accepted_cases, huge_header_jpeg, malformed_cases, now_ms
from tests.support.mqtt import Publisher, unique_id
from tests.support.services import ServeProcess, wait_until

pytestmark = pytest.mark.integration


def _jpeg(img: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, list(params))
    assert ok
    return buf.tobytes()


def hostile_messages(tag: str) -> list[tuple[str, bytes]]:
    """Every refusal class, hostile-but-valid text, odd topics, extreme numbers and times, odd JPEGs."""
    out = [(topic.format(dev=f"{tag}-r{i}"), payload) for i, (_, topic, payload, _) in enumerate(malformed_cases())]
    out += [(topic.format(dev=f"{tag}-s{i}"), payload)
            for i, (_, topic, payload) in enumerate(hostile_accepted_cases())]
    ts = now_ms()
    rng = np.random.default_rng(5)
    img = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
    good = _jpeg(img)
    sof = good.find(b"\xff\xc0")
    arith = bytearray(good)
    arith[sof + 1] = 0xC9  # claims arithmetic coding
    out += [
        (f"ioc/v1/traffic/{'é' * 2000}/telemetry", b"{}"),  # a long unicode device id
        ("ioc/v1/traffic//telemetry", b"{}"),
        ("ioc/v1/traffic/a/telemetry/extra", b"{}"),
        (f"ioc/v1/traffic/{tag}-empty/telemetry", b""),
        (f"ioc/v1/traffic/{tag}-big/telemetry", b"[" + b"1," * 2_500_000 + b"1]"),  # 5 MB
        (f"ioc/v1/bts/{tag}-deep/event", b'{"ts": %d, "type": "x", "detail": %s1%s}' % (ts, b"[" * 1000, b"]" * 1000)),
        (f"ioc/v1/bts/{tag}-bom/telemetry", b'\xef\xbb\xbf{"ts": %d, "metrics": {"a": 1}}' % ts),
        (f"ioc/v1/traffic/{tag}-dup/telemetry", b'{"ts": %d, "metrics": {"a": 1}, "metrics": {"b": 2}}' % ts),
        (f"ioc/v1/traffic/{tag}-old/telemetry", b'{"ts": "2000-01-01T00:00:00.001Z", "metrics": {"a": 1}}'),
        (f"ioc/v1/bts/{tag}-types/status", b'{"state": ["online"], "reason": {"a": 1}}'),
        (f"ioc/v1/bts/{tag}-types/event", b'{"ts": [1], "type": 5, "severity": null, "detail": []}'),
        (f"ioc/v1/camera/{tag}-types/telemetry", b'{"ts": %d, "metrics": {"fps": true, "bitrate_kbps": 1e308}}' % ts),
        (f"ioc/v1/camera/{tag}-bomb/snapshot", huge_header_jpeg()),
        (f"ioc/v1/camera/{tag}-tiny/snapshot", _jpeg(img[:1, :1])),
        (f"ioc/v1/camera/{tag}-thin/snapshot", _jpeg(rng.integers(0, 255, (2, 8000, 3), dtype=np.uint8))),
        (f"ioc/v1/camera/{tag}-prog/snapshot", _jpeg(img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        (f"ioc/v1/camera/{tag}-gray/snapshot", _jpeg(img[:, :, 0])),
        (f"ioc/v1/camera/{tag}-cut/snapshot", good[: len(good) // 2] + b"\xff\xd9"),
        (f"ioc/v1/camera/{tag}-arith/snapshot", bytes(arith)),
    ]
    # extreme numbers: a float range that overflows (made the detectors raise), subnormals, a jump
    for k in range(6):
        huge = b"1e308" if k % 2 else b"-1e308"
        out.append((f"ioc/v1/traffic/{tag}-huge/telemetry",
                    b'{"ts": %d, "metrics": {"flow_veh_h": %s}}' % (ts - 6000 + k * 1000, huge)))
        out.append((f"ioc/v1/traffic/{tag}-tiny/telemetry",
                    b'{"ts": %d, "metrics": {"flow_veh_h": 5e-324, "speed_kmh": -0.0}}' % (ts - 6000 + k * 1000)))
    # one device inventing event types: every new type was a new alert of its incident (3,000 blocked the loop 35 s)
    out += [(f"ioc/v1/bts/{tag}-types/event", b'{"ts": %d, "type": "t%d", "severity": "critical"}' % (ts, k))
            for k in range(120)]
    return out


async def test_after_every_hostile_message_the_next_good_one_is_stored_shown_and_analysed(
        database_url: str, mqtt_port: int, artifacts: Path) -> None:
    tag = unique_id("hfeed")
    good, cam = f"{tag}-good", f"{tag}-cam"
    env = ingest_env(database_url, mqtt_port, IOC_MQTT__CLIENT_ID=f"hfeed-{uuid.uuid4().hex[:6]}",
                     IOC_TEST_ADMIN_TOKEN=make_token_sync(database_url, "admin"))
    hostile = hostile_messages(tag)
    log_path = artifacts / "serve.log"
    log_from = log_path.stat().st_size if log_path.exists() else 0
    with ServeProcess(env, log_path) as srv:
        url, headers = srv.ws_url("/ws/live"), srv.auth_headers()
        async with websockets.connect(url, additional_headers=headers, max_size=None) as screen:
            await asyncio.wait_for(screen.recv(), 10)  # the snapshot
            seen: set[int] = set()

            async def watch() -> None:
                while True:
                    frames: Any = json.loads(await screen.recv())
                    for f in frames if isinstance(frames, list) else [frames]:
                        if f.get("type") == "reading" and f.get("device_id") == good:
                            seen.add(int(f["metrics"]["speed_kmh"]))

            watcher = asyncio.create_task(watch())
            pub = Publisher(mqtt_port)
            t0 = now_ms() - 60_000
            last_picture = 0.0
            try:
                for k, (topic, payload) in enumerate(hostile):
                    pub.publish(topic, payload)
                    pub.publish(f"ioc/v1/traffic/{good}/telemetry",
                                {"ts": t0 + k * 100, "seq": k, "metrics": {"speed_kmh": k}})
                    if k % 8 == 0:  # a good camera between hostile ones: a scene that moves a little
                        shifted = np.roll(scene(), k, axis=1)
                        pub.publish(f"ioc/v1/camera/{cam}/snapshot", _jpeg(shifted))
                        last_picture = time.time()
                    pub.wait_all()  # one at a time, in order: each good one really follows its hostile one
            finally:
                pub.close()

            conn = await asyncpg.connect(database_url)
            try:
                async def stored() -> set[int]:
                    return {r["seq"] for r in await conn.fetch(
                        "SELECT DISTINCT seq FROM telemetry WHERE device_id = $1", good)}

                deadline = time.monotonic() + 60
                while len(await stored()) < len(hostile) and time.monotonic() < deadline:
                    await asyncio.sleep(0.3)
                assert await stored() == set(range(len(hostile))), "a good reading after a hostile one was not stored"
                assert not await conn.fetchval("SELECT count(*) FROM quarantine WHERE topic LIKE $1 "
                                               "AND reason = 'internal_error'", f"%{tag}%")
                assert await conn.fetchval("SELECT count(*) FROM quarantine WHERE topic = $1 AND reason = $2",
                                           f"ioc/v1/bts/{tag}-types/event", "too_many_event_types") == 120 - 64
            finally:
                await conn.close()
            deadline = time.monotonic() + 20
            while len(seen) < len(hostile) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert seen == set(range(len(hostile))), f"missing on the feed: {sorted(set(range(len(hostile))) - seen)}"

            # the good camera's latest picture was analysed (its health is stamped with that picture's time)
            async def analysed() -> bool:
                async with websockets.connect(url + f"?devices={cam}", additional_headers=headers,
                                              max_size=None) as ws:
                    first: Any = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    snap = first[0] if isinstance(first, list) else first
                    health = next((d.get("health") or {} for d in snap["devices"] if d["device_id"] == cam), {})
                    ts = health.get("ts")
                    return isinstance(ts, str) and _epoch(ts) >= last_picture - 2

            deadline = time.monotonic() + 30
            while not await analysed():
                assert time.monotonic() < deadline, "the good camera's last picture was not analysed"
                await asyncio.sleep(0.5)

            # a screen sends hostile frames and an action flood; it stays connected, the other screen's feed goes on
            async with websockets.connect(url, additional_headers=headers, max_size=None) as rude:
                await asyncio.wait_for(rude.recv(), 10)
                await rude.send(b"\x00\x01binary")
                await rude.send(b'{"type": "ping"}')
                await rude.send("[" * 100_000 + "]" * 100_000)
                await rude.send(json.dumps({"type": "subscribe", "kinds": 5, "bbox": [1e308, None], "devices": {}}))
                for i in range(200):
                    await rude.send(json.dumps({"type": "action", "action": "ack", "incident_id": 2**40 + i, "ref": i}))
                await rude.send(json.dumps({"type": "ping"}))
                kinds: list[str] = []
                while "pong" not in kinds:
                    frames = json.loads(await asyncio.wait_for(rude.recv(), 20))
                    kinds += [f.get("type") for f in (frames if isinstance(frames, list) else [frames])]
                assert kinds.count("error") >= 3, kinds[:20]
                pub = Publisher(mqtt_port)
                try:
                    pub.publish(f"ioc/v1/traffic/{good}/telemetry",
                                {"ts": now_ms(), "seq": 99_999, "metrics": {"speed_kmh": 99_999}})
                    pub.wait_all()
                finally:
                    pub.close()
                deadline = time.monotonic() + 20
                while 99_999 not in seen:  # polled here: the watcher runs on this loop
                    assert time.monotonic() < deadline, "the other screen's feed stopped after the rude screen"
                    await asyncio.sleep(0.1)
            watcher.cancel()
        wait_until(lambda: srv.get("/readyz").get("status") == "ready", 20, 0.2, what="ready after the hostile input")
    log = log_path.read_bytes()[log_from:].decode(errors="replace")
    assert f"numeric detectors raised on {good}" not in log
    assert "brain task" not in log and "alert engine step raised" not in log


def scene() -> np.ndarray:
    """The same street scene (smooth shapes, not noise) for every picture of the good camera."""
    img = np.zeros((360, 640, 3), dtype=np.uint8)
    cv2.rectangle(img, (50, 200), (590, 330), (90, 90, 90), -1)
    cv2.circle(img, (320, 120), 60, (30, 160, 220), -1)
    cv2.putText(img, "IOC", (400, 100), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    return img


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()

