"""Clients that stop reading a response, against uvicorn with ``ioc serve``'s protocol (ioc/api/http_guard.py).

uvicorn kept an answer its client did not read for as long as the client stayed connected: 32 connections asking
`ioc serve` for 100,000 telemetry rows (8.4 MB each) and reading nothing held 380 MB. Now a response whose buffer
goes down by less than SEND_MIN_BYTES_S a second over SEND_STALL_S is dropped and its connection closed; a slow
reader that keeps reading is served whole.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ioc.api import http_guard
from tests.support.guarded_uvicorn import serve_guarded

pytestmark = pytest.mark.integration

BODY = 8 * 2**20


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    """In-process uvicorn with the guarded protocol (1 s stall bound) answering BODY bytes; yields its port."""

    monkeypatch.setattr(http_guard, "SEND_STALL_S", 1.0)
    monkeypatch.setattr(http_guard, "SEND_MIN_BYTES_S", 64 * 1024)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(BODY).encode())]})
        await send({"type": "http.response.body", "body": b"x" * BODY})

    async with serve_guarded(app) as port:
        yield port


def fetch(port: int, pause_s: float, gap_s: float, rcvbuf: int | None = None) -> tuple[int, str]:
    """Ask for the body, wait ``pause_s`` unread, then read up to 64 KB every ``gap_s``: (bytes got, how it ended)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.settimeout(5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    time.sleep(pause_s)
    got, end = 0, "eof"
    try:
        while chunk := sock.recv(64 * 1024):
            got += len(chunk)
            time.sleep(gap_s)
    except ConnectionResetError:
        end = "reset"
    except TimeoutError:
        end = "still open"
    sock.close()
    return got, end


async def test_a_response_nobody_reads_is_dropped(server: int) -> None:
    got, end = await asyncio.to_thread(fetch, server, 3.0, 0.0, 4096)  # the server runs on this loop
    assert got < BODY and end in ("eof", "reset"), (got, end)


async def test_a_slow_reader_that_keeps_reading_gets_it_all(server: int) -> None:
    got, end = await asyncio.to_thread(fetch, server, 0.0, 0.02)  # up to 3 MB/s, over the 64 KB/s bound
    assert got > BODY and end == "eof", (got, end)
