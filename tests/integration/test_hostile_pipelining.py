"""Pipelined HTTP requests against uvicorn with the guarded protocol (ioc/api/http_guard.py: MAX_PIPELINED).

uvicorn queued every request it parsed and read on after each answer: one connection sending 3.7 MB of pipelined
``GET /healthz`` (answers unread) took `ioc serve` from 118 to 296 MB and others waited 2.2 s; 16 such connections
took it to 2.8 GB, another client timed out after 15 s and the brain lost its lease (``benchmarks.conn_flood
--kinds pipe``). Now a connection with more than MAX_PIPELINED requests waiting is closed, and is not read while any
wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ioc.api import http_guard
from tests.support.guarded_uvicorn import serve_guarded

pytestmark = pytest.mark.integration


@pytest.fixture
async def server() -> AsyncIterator[tuple[int, list[str]]]:
    """In-process uvicorn with ``ioc serve``'s bounds; yields its port and the paths its app was asked for."""

    asked: list[str] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        asked.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async with serve_guarded(app) as port:
        yield port, asked


def request(i: int, last: bool = False) -> bytes:
    return b"GET /r%d HTTP/1.1\r\nHost: x\r\n%s\r\n" % (i, b"Connection: close\r\n" if last else b"")


async def test_a_few_pipelined_requests_are_answered_in_order(server: tuple[int, list[str]]) -> None:
    port, asked = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"".join(request(i, last=i == 9) for i in range(10)))
    got = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert got.count(b"HTTP/1.1 200") == 10
    assert asked == [f"/r{i}" for i in range(10)]


async def test_a_connection_pipelining_without_end_is_closed_and_handled_no_further(
        server: tuple[int, list[str]]) -> None:
    port, asked = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    began = time.monotonic()
    sent = 0
    try:
        while sent < 4 * 2**20 and time.monotonic() - began < 5:  # 4 MB of requests, answers never read
            chunk = b"".join(request(i) for i in range(sent, sent + 2000))
            writer.write(chunk)
            await writer.drain()
            sent += 2000
    except (ConnectionError, OSError):
        pass  # closed by the server
    closed = True
    try:
        await asyncio.wait_for(reader.read(), 5)  # what was answered, then the end
    except ConnectionError:
        pass  # reset: the server closed with requests unread
    except TimeoutError:
        closed = False
    writer.close()
    assert closed, f"still open after {len(asked)} requests handled"
    assert len(asked) <= 2 * (http_guard.MAX_PIPELINED + 1), len(asked)
    assert time.monotonic() - began < 8
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # others are served
    writer.write(request(0, last=True))
    assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
    writer.close()
