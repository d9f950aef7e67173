"""MQTT -> ingest -> live hub -> WebSocket clients, through a real `ioc serve --ingest` process."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.conftest import ingest_env
from tests.support.auth import bearer, make_token_sync
from tests.support.mqtt import Publisher, unique_id
from tests.support.services import ServeProcess

pytestmark = pytest.mark.integration

# Two points inside two districts of the shipped city (Hồng Bàng, Lê Chân).
HB = (20.868, 106.65)
LC = (20.845, 106.69)


@pytest.fixture
def server(database_url: str, mqtt_port: int, artifacts: Path) -> Iterator[ServeProcess]:
    # One device id stands for a busy district here (500 wide readings a second, 12 MB): no device share.
    env = ingest_env(database_url, mqtt_port, IOC_MQTT__CLIENT_ID=f"live-{uuid.uuid4().hex[:6]}",
                     IOC_LIVE__CLIENT_QUEUE="500", IOC_LIVE__REGISTRY_SYNC_S="0.5", IOC_INGEST__DEVICE_BYTES_PER_S="0")
    with ServeProcess(env, artifacts / "serve.log") as srv:
        AUTH.update(bearer(make_token_sync(database_url, "viewer")))
        yield srv
        AUTH.clear()


AUTH: dict[str, str] = {}  # a viewer token: what a wall display holds


def ws_url(srv: ServeProcess, query: str) -> str:
    token = AUTH["Authorization"].removeprefix("Bearer ")
    return f"ws://127.0.0.1:{srv.port}/ws/live?{query}&token={token}"


async def recv_frames(ws: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))  # type: ignore[no-any-return]


async def collect(ws: Any, predicate: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Receive frames until ``predicate(frames so far)`` holds."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not predicate(got):
        got.extend(await recv_frames(ws, max(0.1, deadline - time.monotonic())))
    return got


def get_json(url: str) -> Any:
    """GET a JSON document; None on 404."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=AUTH), timeout=5) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise


def reading(dev: str, i: int, where: tuple[float, float]) -> dict[str, Any]:
    return {"ts": int(time.time() * 1000) - 1000 + i, "seq": i, "metrics": {"speed_kmh": 30.0 + i},
            "lat": where[0], "lon": where[1]}


async def test_district_subscription_and_snapshot_matches_database(server: ServeProcess, mqtt_port: int) -> None:
    hb_dev, lc_dev = unique_id("HBT"), unique_id("LCT")
    pub = Publisher(mqtt_port)
    async with websockets.connect(ws_url(server, "districts=HB")) as ws:
        (snapshot,) = await recv_frames(ws)
        assert snapshot["type"] == "snapshot"
        for i in range(5):
            pub.publish(f"ioc/v1/traffic/{lc_dev}/telemetry", reading(lc_dev, i, LC))
            pub.publish(f"ioc/v1/traffic/{hb_dev}/telemetry", reading(hb_dev, i, HB))
        pub.wait_all()
        got = await collect(ws, lambda fs: sum(f.get("device_id") == hb_dev for f in fs) >= 5)
        assert {f["device_id"] for f in got if f["type"] == "reading"} == {hb_dev}
        assert all(f["district"] == "HB" for f in got if f["type"] == "reading")
        seqs = [f["seq"] for f in got]
        assert seqs == sorted(seqs)

    # Wait until both devices are committed, then a new client's snapshot must equal the database.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        committed = [get_json(f"{server.url}/api/devices/{d}") for d in (hb_dev, lc_dev)]
        if all(c and c["latest"] and c["latest"][0]["value"] == 34.0 for c in committed):
            break
        await asyncio.sleep(0.1)
    async with websockets.connect(ws_url(server, f"devices={hb_dev},{lc_dev}")) as ws:
        (snapshot,) = await recv_frames(ws)
    by_id = {d["device_id"]: d for d in snapshot["devices"]}
    assert set(by_id) == {hb_dev, lc_dev}
    for dev in (hb_dev, lc_dev):
        api = get_json(f"{server.url}/api/devices/{dev}")
        live = by_id[dev]
        assert (live["kind"], live["state"], live["lat"], live["lon"]) == (api["kind"], api["state"], api["lat"],
                                                                          api["lon"])
        assert {m: v["value"] for m, v in live["latest"].items()} == {v["metric"]: v["value"] for v in api["latest"]}
    assert by_id[hb_dev]["district"] == "HB" and by_id[lc_dev]["district"] == "LC"
    # The registry learns the districts too (SQL consumers such as the dashboards group by them).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and [get_json(f"{server.url}/api/devices/{d}")["district"]
                                           for d in (hb_dev, lc_dev)] != ["HB", "LC"]:
        await asyncio.sleep(0.2)
    assert [get_json(f"{server.url}/api/devices/{d}")["district"] for d in (hb_dev, lc_dev)] == ["HB", "LC"]
    pub.close()


async def test_stalled_clients_do_not_hold_back_a_fast_one(server: ServeProcess, mqtt_port: int) -> None:
    dev = unique_id("FAST")
    total = 2000
    # Wide readings (~6 KB per frame, ~12 MB in all) so the stalled clients overflow the kernel's socket
    # buffers and really push back on the server.
    # (120 metrics with long names: a device may use at most 128 metric names, ingest/guard.py)
    wide = {f"wide_metric_{k:03d}_of_a_busy_sensor": float(k) for k in range(120)}
    stalled = [stalled_socket(server.port) for _ in range(5)]
    async with websockets.connect(ws_url(server, f"devices={dev}")) as fast:
        await recv_frames(fast)
        pub = Publisher(mqtt_port)
        # The fast client reads all along, as a screen does (not only once everything is published: its
        # library would stop reading after 16 messages and the frames would pile up at the server).
        reader = asyncio.create_task(collect(fast, lambda fs: _shows_last(fs, total - 1), timeout=90))
        start = time.monotonic()
        for i in range(total):  # a steady 500 msg/s, like a busy district, not one burst
            pub.publish(f"ioc/v1/traffic/{dev}/telemetry", {**reading(dev, i, HB), "metrics": {
                "speed_kmh": float(i), **wide}}, qos=1)
            await asyncio.sleep(max(0.0, (i + 1) / 500 - (time.monotonic() - start)))
        got = await reader
        readings = [f["dev_seq"] for f in got if f["type"] == "reading"]
        stats = get_json(f"{server.url}/api/live/stats")
        pub.close()
        if not [f for f in got if f["type"] == "lagged"]:
            assert readings == list(range(total))
        else:
            # Marked behind: allowed only when the server's own loop was held up (the host starved it: a busy
            # CI machine), never because of the stalled screens; the fast screen still ends on the last value.
            assert stats["loop_stalls"] > 0, stats
            assert readings == sorted(readings)
    # The hub noticed the stalled ones and keeps only latest state for them (bounded memory).
    assert stats["lagging_clients"] == 5 and stats["max_queue"] <= 500
    for sock in stalled:
        sock.close()


def _shows_last(frames: list[dict[str, Any]], last: int) -> bool:
    """A frame carries the device's last value: as a reading, or as a coalesced device state after ``lagged``."""
    for f in reversed(frames):
        if f["type"] == "reading" and f["metrics"].get("speed_kmh") == float(last):
            return True
        if f["type"] == "device" and (f.get("latest", {}).get("speed_kmh") or {}).get("value") == float(last):
            return True
    return False


def stalled_socket(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /ws/live HTTP/1.1\r\nHost: ioc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 b"Authorization: " + AUTH["Authorization"].encode() + b"\r\n\r\n")
    return sock


async def test_reconnect_with_sequence_resumes(server: ServeProcess, mqtt_port: int) -> None:
    dev = unique_id("RES")
    pub = Publisher(mqtt_port)
    async with websockets.connect(ws_url(server, f"devices={dev}")) as ws:
        (snapshot,) = await recv_frames(ws)
        epoch = snapshot["epoch"]
        pub.publish(f"ioc/v1/traffic/{dev}/telemetry", reading(dev, 0, HB))
        got = await collect(ws, lambda fs: any(f["type"] == "reading" for f in fs))
        last_seq = max(f["seq"] for f in got)
    for i in range(1, 6):  # published while the client is away
        pub.publish(f"ioc/v1/traffic/{dev}/telemetry", reading(dev, i, HB))
    pub.wait_all()
    await asyncio.sleep(0.5)
    async with websockets.connect(ws_url(server, f"devices={dev}&resume_from={last_seq}&epoch={epoch}")) as ws:
        got = await collect(ws, lambda fs: sum(f["type"] == "reading" for f in fs) >= 5)
    assert got[0]["type"] == "resumed"
    assert [f["dev_seq"] for f in got if f["type"] == "reading"] == [1, 2, 3, 4, 5]
    async with websockets.connect(ws_url(server, f"devices={dev}&resume_from={last_seq}&epoch=old")) as ws:
        (frame,) = await recv_frames(ws)
    assert frame["type"] == "snapshot"  # another server process: a fresh snapshot instead
    pub.close()
