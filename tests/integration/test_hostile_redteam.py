"""Red-team classes through the running service, each followed by good input that must still be handled.

* Through a real ``ioc serve --ingest`` (one camera shard, real Mosquitto and PostgreSQL): a snapshot of 12,000
  empty scans (462 KB claiming 4096x4096; each scan is a decoding pass over the whole picture) held the camera shard
  for minutes before ``MAX_JPEG_SCANS``: another camera's picture sent after it was not analysed within 60 s, and as
  the embedded ingest's acks wait for the stages, readiness said "4 messages received, none committed for 60 s".
  With it: the good picture, reading and alarm that follow are analysed, stored, shown and alerted, the bomb is
  quarantined with its reason. Classes that held and had no test send alongside: payloads exactly at and one byte
  over both size limits, one device id on three kinds (the first names it, the others are quarantined
  ``kind_conflict``), retained QoS 2 messages, a batch spanning 1,000 days, readings going back in time and
  repeating a timestamp, and events whose detail fills the payload limit.
* On the analytics stage with a real shard process: a shard that stops answering mid-snapshot (SIGSTOP, as a
  decoder spinning in native code) is stopped and rebuilt after the bound (``ioc/camera_watch.py``), the acks it
  held go on, its other cameras are analysed again, and the camera whose picture stalled it is set apart.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import cv2
import httpx
import numpy as np
import pytest
import websockets

from ingest import contract as c
from ingest.records import ParsedMessage, Snapshot
from ioc.analytics_stage import SNAPSHOTS_APART, SNAPSHOTS_STUCK, AnalyticsStage
from ioc.api import ws_guard
from ioc.live.hub import LiveHub
from storage.config import StorageConfig
from storage.db import create_pool
from tests.conftest import ingest_env, own_database
from tests.integration.test_camera_shard_rebuild import camera_on, feed
from tests.support.auth import make_token_sync
from tests.support.corpus import now_ms
from tests.support.guarded_uvicorn import echo_websocket_app, serve_guarded
from tests.support.mqtt import Publisher, unique_id
from tests.support.services import ServeProcess, wait_until
from tests.unit.test_camera_analyser import T0, Road, jpeg
from tests.unit.test_hostile_redteam import hidden_frame, scan_bomb

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """A database of its own: the alarms raised here stay open."""
    yield from own_database()


def _scene(shift: int) -> bytes:
    img = np.zeros((360, 640, 3), np.uint8)
    cv2.rectangle(img, (50, 200), (590, 330), (90, 90, 90), -1)
    cv2.circle(img, (320, 120), 60, (30, 160, 220), -1)
    return jpeg(np.roll(img, shift, axis=1))


def _padded_json(size: int, ts: int) -> bytes:
    head = b'{"ts": %d, "metrics": {"speed_kmh": 1}, "pad": "' % ts
    return head + b"x" * (size - len(head) - 2) + b'"}'


def _padded_jpeg(size: int) -> bytes:
    """A real picture grown to ``size`` bytes with comment segments."""
    pic = jpeg(np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8), 90)
    out, need = bytearray(pic[:2]), size - len(pic)
    while need > 0:
        body = min(need - 4, 65533)
        out += b"\xff\xfe" + (body + 2).to_bytes(2, "big") + b"c" * body
        need -= body + 4
    out += pic[2:]
    assert len(out) == size
    return bytes(out)


def hostile(tag: str) -> tuple[list[tuple[str, bytes, int, bool]], dict[str, str]]:
    """(topic, payload, qos, retain) of each hostile message, and topic -> the quarantine reason it must get."""
    ts, day = now_ms(), 86_400_000
    detail = {f"k{i}": [i, {"a": "v"}] for i in range(9000)}  # ~230 KB: fills the event's payload limit
    msgs: list[tuple[str, bytes, int, bool]] = [
        (f"ioc/v1/camera/{tag}-bomb/snapshot", scan_bomb(12_000), 1, False),
        (f"ioc/v1/camera/{tag}-hidden/snapshot", hidden_frame(30000, 30000), 1, False),  # stored as 64x48 before
        (f"ioc/v1/traffic/{tag}-at/telemetry", _padded_json(c.MAX_JSON_BYTES, ts), 1, False),
        (f"ioc/v1/traffic/{tag}-over/telemetry", _padded_json(c.MAX_JSON_BYTES + 1, ts), 1, False),
        (f"ioc/v1/camera/{tag}-jat/snapshot", _padded_jpeg(c.MAX_SNAPSHOT_BYTES), 1, False),
        (f"ioc/v1/camera/{tag}-jover/snapshot", _padded_jpeg(c.MAX_SNAPSHOT_BYTES + 1), 1, False),
        # one id on every kind: the first (a camera) names it in the registry, the others are quarantined
        # kind_conflict (ingest/kinds.py), nothing stops
        (f"ioc/v1/camera/{tag}-kind/snapshot", _scene(7), 1, False),
        (f"ioc/v1/bts/{tag}-kind/telemetry", json.dumps({"ts": ts, "metrics": {"battery_pct": 5}}).encode(), 1, False),
        (f"ioc/v1/traffic/{tag}-kind/event", json.dumps({"ts": ts, "type": "door_open"}).encode(), 1, False),
        (f"ioc/v1/bts/{tag}-kind/status", b'{"state": "offline"}', 2, True),
        (f"ioc/v1/camera/{tag}-ret/snapshot", _scene(9), 2, True),
        (f"ioc/v1/traffic/{tag}-ret/telemetry", json.dumps({"ts": ts, "metrics": {"a": 1}}).encode(), 2, True),
        (
            f"ioc/v1/traffic/{tag}-days/telemetry",
            json.dumps([{"ts": ts - k * day, "metrics": {"speed_kmh": k % 90}} for k in range(1000)]).encode(),
            1,
            False,
        ),
    ]
    msgs += [
        (
            f"ioc/v1/traffic/{tag}-back/telemetry",
            json.dumps({"ts": ts - k * 60_000, "metrics": {"speed_kmh": 50 + k % 7}}).encode(),
            1,
            False,
        )
        for k in range(100)
    ]
    msgs += [
        (f"ioc/v1/traffic/{tag}-same/telemetry", json.dumps({"ts": ts, "metrics": {"speed_kmh": k}}).encode(), 1, False)
        for k in range(20)
    ]
    msgs += [
        (
            f"ioc/v1/bts/{tag}-d{i}/event",
            json.dumps({"ts": ts, "type": "door_open", "severity": "critical", "detail": detail}).encode(),
            1,
            False,
        )
        for i in range(3)
    ]
    refused = {
        f"ioc/v1/bts/{tag}-kind/telemetry": "kind_conflict",
        f"ioc/v1/traffic/{tag}-kind/event": "kind_conflict",
        f"ioc/v1/camera/{tag}-bomb/snapshot": "image_too_large",
        f"ioc/v1/camera/{tag}-hidden/snapshot": "not_jpeg",
        f"ioc/v1/traffic/{tag}-over/telemetry": "too_large",
        f"ioc/v1/camera/{tag}-jover/snapshot": "too_large",
    }
    return msgs, refused


async def test_a_snapshot_of_thousands_of_scans_stops_nothing_nor_do_the_other_classes(
    database_url: str, mqtt_port: int, artifacts: Path
) -> None:
    tag = unique_id("redteam")
    good, cam, alarm = f"{tag}-good", f"{tag}-cam", f"{tag}-alarm"
    env = ingest_env(
        database_url,
        mqtt_port,
        IOC_MQTT__CLIENT_ID=f"redteam-{uuid.uuid4().hex[:6]}",
        IOC_ANALYTICS__CAMERA_PROCESSES="1",
        IOC_TEST_ADMIN_TOKEN=make_token_sync(database_url, "admin"),
    )
    msgs, refused = hostile(tag)
    log_path = artifacts / "serve.log"
    log_from = log_path.stat().st_size if log_path.exists() else 0
    with ServeProcess(env, log_path) as srv:
        headers = srv.auth_headers()
        async with websockets.connect(
            srv.ws_url("/ws/live") + f"?devices={good}", additional_headers=headers, max_size=None
        ) as screen:
            await asyncio.wait_for(screen.recv(), 10)  # the snapshot
            pub = Publisher(mqtt_port)
            try:
                for topic, payload, qos, retain in msgs:
                    pub.publish(topic, payload, qos=qos, retain=retain)
                pub.wait_all()
                sent = time.monotonic()
                pub.publish(f"ioc/v1/camera/{cam}/snapshot", _scene(1))
                pub.publish(f"ioc/v1/traffic/{good}/telemetry", {"ts": now_ms(), "metrics": {"speed_kmh": 42}})
                pub.publish(f"ioc/v1/bts/{alarm}/event", {"ts": now_ms(), "type": "door_open", "severity": "critical"})
                pub.wait_all()
                for topic, _, _, retain in msgs:  # no retained message left on the shared broker
                    if retain:
                        pub.publish(topic, b"", qos=1, retain=True)
                pub.wait_all()
            finally:
                pub.close()

            async def on_screen() -> bool:
                while True:
                    frames: Any = json.loads(await screen.recv())
                    for f in frames if isinstance(frames, list) else [frames]:
                        if f.get("type") == "reading" and f.get("device_id") == good:
                            return True

            await asyncio.wait_for(on_screen(), 20)

            # a screen's messages with fields of the wrong JSON type: each an error frame with its reason (a list or
            # an object as resume_from raised TypeError: a stack trace in the log for every such message)
            for wrong in ([1], {"a": 1}, "x", 1e300, True):
                await screen.send(json.dumps({"type": "subscribe", "devices": [good], "resume_from": wrong}))
            await screen.send(json.dumps({"type": "ping"}))
            answers: list[Any] = []
            while not any(f.get("type") == "pong" for f in answers):
                frames = json.loads(await asyncio.wait_for(screen.recv(), 10))
                answers += frames if isinstance(frames, list) else [frames]
            errors = [f["detail"] for f in answers if f.get("type") == "error"]
            assert errors == ["resume_from must be an integer"] * 3, errors
        async with websockets.connect(
            srv.ws_url("/ws/live") + "?resume_from=1e5&epoch=x", additional_headers=headers, max_size=None
        ) as refused_screen:
            assert json.loads(await asyncio.wait_for(refused_screen.recv(), 10))["type"] == "error"

        conn = await asyncpg.connect(database_url)
        try:
            async with httpx.AsyncClient(base_url=srv.url, headers=headers, timeout=10) as api:

                async def handled() -> list[str]:
                    missing = []
                    if not await conn.fetchval("SELECT count(*) FROM telemetry WHERE device_id = $1", good):
                        missing.append("the good reading stored")
                    if not (await api.get("/api/alerts", params={"device_id": alarm})).json():
                        missing.append("the alarm's alert")
                    async with websockets.connect(
                        srv.ws_url("/ws/live") + f"?devices={cam}", additional_headers=headers, max_size=None
                    ) as ws:
                        first: Any = json.loads(await asyncio.wait_for(ws.recv(), 10))
                        snap = first[0] if isinstance(first, list) else first
                        if not any((d.get("health") or {}).get("ts") for d in snap["devices"] if d["device_id"] == cam):
                            missing.append("the good camera's picture analysed")
                    return missing

                missing = await handled()
                while missing and time.monotonic() - sent < 20:
                    await asyncio.sleep(0.3)
                    missing = await handled()
                assert not missing, f"not within 20 s of the hostile messages: {missing}"
            rows = await conn.fetch("SELECT topic, reason FROM quarantine WHERE topic LIKE $1", f"%{tag}%")
            # clearing a retained message (below) reaches current subscribers as an empty message: refused as such
            cleared = {t: "not_jpeg" if t.endswith("snapshot") else "not_json" for t, _, _, retain in msgs if retain}
            # the retained status of the camera's id as a BTS and the retained traffic reading of the retained camera
            # snapshot's id: refused as of another kind before they were cleared
            kinds = {(f"ioc/v1/bts/{tag}-kind/status", "kind_conflict"),
                     (f"ioc/v1/traffic/{tag}-ret/telemetry", "kind_conflict")}
            assert {(r["topic"], r["reason"]) for r in rows} == {*refused.items(), *cleared.items(), *kinds}
            assert await conn.fetchval("SELECT count(*) FROM telemetry WHERE device_id = $1", f"{tag}-days") == 1000
            assert await conn.fetchval("SELECT count(*) FROM telemetry WHERE device_id = $1", f"{tag}-back") == 100
            assert await conn.fetchval("SELECT count(*) FROM alerts WHERE device_id LIKE $1", f"{tag}-d%") == 3
        finally:
            await conn.close()
        wait_until(lambda: srv.get("/readyz").get("status") == "ready", 20, 0.2, what="ready after the hostile input")
    log = log_path.read_bytes()[log_from:].decode(errors="replace")
    assert "Traceback" not in log and "brain task" not in log and "alert engine step raised" not in log
    assert "WebSocket message handling raised" not in log


async def test_a_shard_that_stops_answering_mid_snapshot_is_rebuilt_and_its_camera_set_apart(database_url: str) -> None:
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    stage = AnalyticsStage(LiveHub(), pool, camera_processes=1)
    labels: dict[str, list[str]] = {}
    stage.on_health = lambda dev, label, conf, ts: labels.setdefault(dev, []).append(label)
    seq = 0
    stage.position = lambda: seq
    road = Road(6)
    frame = jpeg(road.frame(0))
    calm, stalling = camera_on(stage, 0), camera_on(stage, 0)
    loop = asyncio.get_running_loop()
    try:
        assert await feed(stage, labels, calm, frame, 1) == ["ok"]  # the shard's process is up
        stage.watch.stuck_s = 1.0
        stuck, apart = SNAPSHOTS_STUCK._value.get(), SNAPSHOTS_APART._value.get()
        os.kill(next(iter(stage._shards[0]._processes)), signal.SIGSTOP)  # spins: never answers
        seq = 1
        stage.on_parsed(ParsedMessage([Snapshot(stalling, "camera", T0, frame, 640, 360)], []))
        stage.watch_shards()
        stage.handed = min(seq, min(stage._analysing, default=(seq + 1,))[0] - 1)
        assert stage.handed == 0  # the stalled snapshot holds the acks
        deadline = loop.time() + 30
        while stage.health_problems() or stage._analysing or SNAPSHOTS_STUCK._value.get() == stuck:
            assert loop.time() < deadline, f"stalled shard not rebuilt: {stage.health_problems()}"
            stage.watch_shards()
            await asyncio.sleep(0.1)
        assert SNAPSHOTS_STUCK._value.get() == stuck + 1
        # the acks go on, the shard's other camera is analysed again, the stalling camera is left out a while
        assert min(stage._analysing, default=(seq + 1,))[0] - 1 >= seq
        assert await feed(stage, labels, calm, jpeg(road.frame(1)), 1, timeout_s=30) == ["ok"]
        stage.on_parsed(ParsedMessage([Snapshot(stalling, "camera", T0 + timedelta(seconds=5), frame, 640, 360)], []))
        assert SNAPSHOTS_APART._value.get() == apart + 1
        assert stalling not in labels
    finally:
        for pid in list(stage._shards[0]._processes):
            os.kill(pid, signal.SIGCONT)
        stage.close()
        await pool.close()


def decode_raw(data: bytes) -> str:
    """In a shard process: what OpenCV itself makes of ``data`` (the shape, or its error), no header reader first.
    Decoded in full, as ``decode_work`` does a picture whose header it read as small (OpenCV checks the size it
    decodes at)."""
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error as err:
        return f"refused: {err}"
    return f"decoded {None if img is None else img.shape}"


def test_the_camera_shards_decoder_refuses_pictures_beyond_the_caps_by_itself() -> None:
    """The third line: whatever the header readers made of a JPEG's bytes, the shard's decoder reads its own frame
    header and refuses a picture past the contract's caps (OpenCV's defaults: 1 G pixels)."""
    shard = AnalyticsStage._new_shard()
    try:
        assert shard.submit(decode_raw, hidden_frame(30000, 30000)).result(60).startswith("refused")
        assert shard.submit(decode_raw, hidden_frame(c.MAX_IMAGE_WIDTH + 8, 64)).result(60).startswith("refused")
        assert shard.submit(decode_raw, _scene(0)).result(60) == "decoded (360, 640)"
    finally:
        shard.shutdown()


def _frame(opcode: int, payload: bytes, fin: bool) -> bytes:
    """One masked client frame (payloads under 126 bytes)."""
    mask = os.urandom(4)
    return (
        bytes([(0x80 if fin else 0) | opcode, 0x80 | len(payload)])
        + mask
        + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    )


def _fragments(port: int, pieces: list[bytes]) -> tuple[float, bytes]:
    """Upgrade, send one text message in ``pieces`` (a frame each), then read until closed or 5 s: (seconds, read)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1024)
    assert head.startswith(b"HTTP/1.1 101"), head
    wire = b"".join(_frame(1 if i == 0 else 0, p, i == len(pieces) - 1) for i, p in enumerate(pieces))
    began, read = time.monotonic(), head.split(b"\r\n\r\n", 1)[1]
    try:
        sock.sendall(wire)
        while chunk := sock.recv(65536):
            read += chunk
            if read[:1] == b"\x81" and len(read) >= 2 + read[1]:  # the echo, whole
                break
    except OSError:  # reset: closed by the server while we sent
        pass
    finally:
        sock.close()
    return time.monotonic() - began, read


async def test_a_message_in_countless_fragments_closes_its_connection_and_no_other() -> None:
    """Each WebSocket frame costs the event loop its parsing, whatever it carries: one message sent as 1-byte
    fragments (13 MB of them before the 1 MiB message bound closed it) held another client's API call 3.5 s.
    A message may come in ``MAX_FRAGMENTS`` frames; past them its connection is closed with 1009."""
    ends: list[Any] = []
    async with serve_guarded(echo_websocket_app(ends)) as port:
        took, read = await asyncio.to_thread(_fragments, port, [b'{"a":', b" 1", b"}"] + [b" "] * 20)
        assert read.startswith(b"\x81") and read[2:].startswith(b'{"a": 1}'), read[:40]  # a few: taken whole
        took, read = await asyncio.to_thread(_fragments, port, [b"["] + [b" "] * (4 * ws_guard.MAX_FRAGMENTS))
        assert read[:1] == b"\x88" and int.from_bytes(read[2:4], "big") == 1009, read[:40]
        assert took < 5
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as other:
            await other.send("served")
            assert await asyncio.wait_for(other.recv(), 5) == "served"
    assert 1009 in [code for code, _ in ends], ends  # the app is told


async def test_a_camera_in_flight_at_two_deaths_of_its_shard_is_set_apart(database_url: str) -> None:
    """A picture that crashes the decoder would have its shard rebuilt again and again (a growing pause up to 60 s,
    every camera of the shard skipped meanwhile). Its camera is set apart at the second death it was in flight at;
    one death alone (the OOM killer may pick a shard for its size) sets no one apart."""
    pool = await create_pool(database_url, StorageConfig(), max_size=2)
    stage = AnalyticsStage(LiveHub(), pool, camera_processes=1)
    labels: dict[str, list[str]] = {}
    stage.on_health = lambda dev, label, conf, ts: labels.setdefault(dev, []).append(label)
    road = Road(6)
    calm, crasher = camera_on(stage, 0), camera_on(stage, 0)
    loop = asyncio.get_running_loop()

    async def crash_with(at: int) -> None:
        """The crasher's picture stamped ``at`` s after T0 is in flight when the shard's process dies."""
        pid = next(iter(stage._shards[0]._processes))
        os.kill(pid, signal.SIGSTOP)
        stage.on_parsed(
            ParsedMessage(
                [Snapshot(crasher, "camera", T0 + timedelta(seconds=at), jpeg(road.frame(at % 40)), 640, 360)], []
            )
        )
        os.kill(pid, signal.SIGKILL)
        deadline = loop.time() + 30
        while not stage.health_problems():
            assert loop.time() < deadline, "dead shard not noticed"
            stage.watch_shards()
            await asyncio.sleep(0.05)
        while stage.health_problems():
            assert loop.time() < deadline, f"dead shard not rebuilt: {stage.health_problems()}"
            stage.watch_shards()  # as the stage's loop does each second
            await asyncio.sleep(0.05)

    try:
        assert await feed(stage, labels, calm, jpeg(road.frame(0)), 1) == ["ok"]
        apart = SNAPSHOTS_APART._value.get()
        await crash_with(5)
        assert await feed(stage, labels, crasher, jpeg(road.frame(2)), 1, timeout_s=30)  # one death: still analysed
        await crash_with(20_000)  # after the picture feed() stamped T0 + 10,000 s
        assert await feed(stage, labels, calm, jpeg(road.frame(4)), 1, timeout_s=30) == ["ok"]
        stage.on_parsed(
            ParsedMessage([Snapshot(crasher, "camera", T0 + timedelta(days=2), jpeg(road.frame(5)), 640, 360)], [])
        )
        assert SNAPSHOTS_APART._value.get() == apart + 1
    finally:
        stage.close()
        await pool.close()
