"""WebSocket ping floods against uvicorn with ``ioc serve``'s protocols (ioc/api/ws_guard.py).

uvicorn answered every ping at once, whatever the transport's buffer held: a screen of `ioc serve` sending 300 MB of
pings and never reading the pongs took the server from 116 to 407 MB, and another address's API call took 6.2 s
meanwhile. Now a connection past CONTROL_BURST control frames at once (CONTROL_RATE a second) is closed with 1008.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from ioc.api import ws_guard
from tests.support.guarded_uvicorn import echo_websocket_app, serve_guarded

pytestmark = pytest.mark.integration


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[Any]]]:
    """In-process uvicorn with ``ioc serve``'s bounds and an echoing WebSocket app; yields its port and the
    disconnect codes the app was told."""

    ends: list[Any] = []
    app = echo_websocket_app(ends)

    async with serve_guarded(app) as port:
        yield port, ends


def ping(payload: bytes = b"p" * 125) -> bytes:
    mask = os.urandom(4)
    return bytes([0x89, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def test_a_client_pinging_now_and_then_is_answered(server: tuple[int, list[Any]]) -> None:
    port, _ = server
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws", ping_interval=None) as ws:
        for _ in range(ws_guard.CONTROL_BURST // 2):
            await asyncio.wait_for(await ws.ping(), 5)
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), 5) == "still here"


def flood(port: int) -> tuple[int, float]:
    """Upgrade, then pings for at most 64 MB or 10 s, never reading the pongs; (bytes taken, seconds)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert sock.recv(12) == b"HTTP/1.1 101"  # upgraded (the rest of the answer is never read)
    began, sent = time.monotonic(), 0
    pings = ping() * 2000  # 262 KB a write
    try:
        while sent < 64 * 2**20 and time.monotonic() - began < 10:
            sock.sendall(pings)
            sent += len(pings)
    except OSError:
        pass  # closed by the server
    sock.close()
    return sent, time.monotonic() - began


async def test_a_ping_flood_closes_its_connection_and_no_other(server: tuple[int, list[Any]]) -> None:
    port, ends = server
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as other:
        sent, took = await asyncio.to_thread(flood, port)  # the server runs on this loop
        assert sent < 64 * 2**20 and took < 10, f"{sent / 2**20:.0f} MB of pings taken in {took:.1f} s"
        await other.send("served")
        assert await asyncio.wait_for(other.recv(), 5) == "served"
    for _ in range(50):
        if ends:
            break
        await asyncio.sleep(0.1)
    assert ends and ends[0][0] == 1008, ends
