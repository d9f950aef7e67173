"""An ASGI app served in-process by uvicorn with ``ioc serve``'s protocol bounds (``http_guard.uvicorn_bounds``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tests.support.services import free_port


@contextlib.asynccontextmanager
async def serve_guarded(app: Any) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 with the guarded HTTP protocol and WebSocket bounds; yields the port."""
    import uvicorn

    from ioc.api import http_guard

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        **http_guard.uvicorn_bounds()))
    serving = asyncio.create_task(srv.serve())
    try:
        while not srv.started:
            await asyncio.sleep(0.02)
        yield port
    finally:
        srv.should_exit = srv.force_exit = True
        await asyncio.wait_for(serving, 15)


def echo_websocket_app(ends: list[Any]) -> Any:
    """An ASGI app whose WebSocket echoes text frames; each disconnect's (code, reason) is appended to ``ends``."""

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                ends.append((message.get("code"), message.get("reason")))
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})

    return app
