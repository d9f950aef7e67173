"""A stopping server (SIGTERM, Ctrl-C) does not wait for ever on a request or a screen that stays open: after
``http_guard.SHUTDOWN_GRACE_S`` uvicorn cuts them, so a stop always ends (ioc serve, the demo)."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets
from fastapi import FastAPI, WebSocket

from ioc.api import http_guard
from tests.support.services import free_port

pytestmark = pytest.mark.integration


async def test_an_open_request_and_screen_do_not_hold_the_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    monkeypatch.setattr(http_guard, "SHUTDOWN_GRACE_S", 1)
    app = FastAPI()
    entered = asyncio.Event()

    @app.get("/never")
    async def never() -> None:
        entered.set()
        await asyncio.Event().wait()  # a handler that never returns (a stuck query, a slow upstream)

    @app.websocket("/ws")
    async def screen(ws: WebSocket) -> None:
        await ws.accept()
        await asyncio.Event().wait()  # a feed that never ends by itself

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **http_guard.uvicorn_bounds()))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.wait_for(entered.wait(), 5)
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws"):
        began = time.monotonic()
        server.should_exit = True  # what uvicorn's SIGTERM/SIGINT handler sets
        await asyncio.wait_for(serving, 10)
        assert time.monotonic() - began < 5
    writer.close()
