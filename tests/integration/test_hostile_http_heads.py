"""Slow and endless request heads against a real `ioc serve --ingest` (ioc/api/http_guard.py).

Before the fix a connection that sent nothing, or a header line now and then, stayed open for ever, and a header
that never ended was buffered whole (136 MB in 20 s: the server's memory from 110 to 309 MB).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from ioc.api.http_guard import HEAD_TIMEOUT_S, MAX_HEAD_BYTES
from tests.conftest import ingest_env
from tests.support.auth import make_token_sync
from tests.support.services import ServeProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(database_url: str, mqtt_port: int) -> Iterator[ServeProcess]:
    env = ingest_env(database_url, mqtt_port, IOC_MQTT__CLIENT_ID=f"hhttp-{uuid.uuid4().hex[:6]}",
                     IOC_TEST_ADMIN_TOKEN=make_token_sync(database_url, "admin"))
    log = Path(__file__).resolve().parents[2] / "artifacts" / "test_hostile_http_heads"
    log.mkdir(parents=True, exist_ok=True)
    with ServeProcess(env, log / "serve.log") as srv:
        yield srv


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def answer(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except TimeoutError:
        out += b"<still open>"
    except ConnectionResetError:
        out += b"<reset>"
    return out


def test_a_header_that_never_ends_is_refused_without_buffering_it(served: ServeProcess) -> None:
    before = rss_mb(served.pid)
    sock = socket.create_connection(("127.0.0.1", served.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: ")
    sent = 0
    try:
        while sent < 64 * 2**20:
            sock.sendall(b"a" * 65536)
            sent += 65536
    except OSError:
        pass  # closed by the server
    got = answer(sock, 5)
    sock.close()
    assert got.startswith(b"HTTP/1.1 431"), got[:200]
    assert sent < 64 * 2**20, "the server read 64 MB of one header"
    assert rss_mb(served.pid) - before < 32
    assert MAX_HEAD_BYTES <= 65536


async def test_slow_and_silent_connections_are_closed_while_real_clients_are_served(served: ServeProcess) -> None:
    silent = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(50)]
    slow = socket.create_connection(("127.0.0.1", served.port))
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    url, headers = served.ws_url("/ws/live?kinds=bts"), served.auth_headers()
    async with websockets.connect(url, additional_headers=headers, max_size=None) as screen:
        await asyncio.wait_for(screen.recv(), 10)
        began = time.monotonic()
        closed_after = None
        while time.monotonic() - began < HEAD_TIMEOUT_S + 5:  # a header line a second: never complete
            try:
                slow.sendall(b"X-Slow: 1\r\n")
            except OSError:
                closed_after = time.monotonic() - began
                break
            await asyncio.sleep(1)
            assert served.get("/healthz") is not None  # other clients are served meanwhile
        assert closed_after is not None, "a head sent a line a second was never timed out"
        # the screen (an upgraded connection) is not timed out by the head's deadline
        await screen.send('{"type": "ping"}')
        while "pong" not in await asyncio.wait_for(screen.recv(), 10):
            pass  # a heartbeat or a frame first
    for sock in silent:
        assert answer(sock, 3).startswith(b"HTTP/1.1 408")
        sock.close()
    slow.close()


async def test_a_body_that_does_not_come_is_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process uvicorn with the guarded protocol and a 1 s body deadline: a POST whose body stops halfway is
    answered 408 and closed; a whole body is served on the same server."""
    import uvicorn

    from ioc.api import http_guard
    from tests.support.services import free_port

    monkeypatch.setattr(http_guard, "BODY_TIMEOUT_S", 1.0)

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % len(body)})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **http_guard.uvicorn_bounds()))
    serving = asyncio.create_task(server.serve())
    writers: list[asyncio.StreamWriter] = []
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        began = time.monotonic()
        try:
            got = await asyncio.wait_for(reader.read(), 10)  # until the server closes
        except TimeoutError:
            got = b"<still open after 10 s>"
        assert got.startswith(b"HTTP/1.1 408"), got[:200]
        assert time.monotonic() - began < 5
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        got = await asyncio.wait_for(reader.read(), 10)
        assert got.startswith(b"HTTP/1.1 200") and b"\r\n5\r\n" in got, got[:200]
    finally:
        for w in writers:
            w.close()
        server.should_exit = server.force_exit = True
        await asyncio.wait_for(serving, 15)
