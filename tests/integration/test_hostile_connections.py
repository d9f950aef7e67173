"""Connections held by one client address against a real `ioc serve --ingest` (ioc/api/conn_limits.py).

Before the fix one address could open as many connections as the process could hold files (each lived 10 s
without a request head, and could be opened again): with 4,096 open files, 5,000 idle connections from 127.0.0.1
took every descriptor and a client from another address was reset at once (``benchmarks.conn_flood``).
Here an address may hold 20: the extra ones are answered 429 at once, another address is served meanwhile, and
every slot comes back when its connection goes (closed, reset, upgraded to a WebSocket and closed by either side).
"""

from __future__ import annotations

import asyncio
import http.client
import socket
import struct
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.conftest import ingest_env
from tests.support.auth import make_token_sync
from tests.support.services import ServeProcess

pytestmark = pytest.mark.integration

CAP = 20
HOSTILE, OTHER = "127.0.0.1", "127.0.0.2"


@pytest.fixture(scope="module")
def served(database_url: str, mqtt_port: int) -> Iterator[ServeProcess]:
    env = ingest_env(database_url, mqtt_port, IOC_MQTT__CLIENT_ID=f"hconn-{uuid.uuid4().hex[:6]}",
                     IOC_TEST_ADMIN_TOKEN=make_token_sync(database_url, "admin"),
                     IOC_AUTH__CONNECTIONS_PER_CLIENT=str(CAP), IOC_AUTH__WS_PER_CLIENT=str(CAP * 3))
    log = Path(__file__).resolve().parents[2] / "artifacts" / "test_hostile_connections"
    log.mkdir(parents=True, exist_ok=True)
    with ServeProcess(env, log / "serve.log") as srv:
        yield srv


def connect(srv: ServeProcess, source: str = HOSTILE) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=5, source_address=(source, 0))


def what_came(sock: socket.socket) -> str:
    """The status line the server sent, "closed", or "nothing" (peeked: the rest stays unread)."""
    sock.setblocking(False)
    try:
        got = sock.recv(12, socket.MSG_PEEK)
    except BlockingIOError:
        return "nothing"
    finally:
        sock.setblocking(True)
    return got.decode() if got else "closed"


def hold(srv: ServeProcess, n: int) -> tuple[list[socket.socket], list[str]]:
    """N idle connections from HOSTILE and, half a second later, what each has been told."""
    socks = [connect(srv) for _ in range(n)]
    time.sleep(0.5)
    return socks, [what_came(s) for s in socks]


def reset(sock: socket.socket) -> None:
    """Vanish: close with a TCP reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def served_elsewhere(srv: ServeProcess, path: str) -> tuple[int, float]:
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5, source_address=(OTHER, 0))
    conn.request("GET", path, headers=srv.auth_headers())
    status = conn.getresponse().status
    conn.close()
    return status, time.monotonic() - began


async def snapshot_elsewhere(srv: ServeProcess) -> float:
    began = time.monotonic()
    async with websockets.connect(srv.ws_url("/ws/live?kinds=bts"), additional_headers=srv.auth_headers(),
                                  max_size=None, local_addr=(OTHER, 0)) as screen:
        await asyncio.wait_for(screen.recv(), 5)
    return time.monotonic() - began


async def test_an_address_past_its_cap_is_refused_at_once_and_another_is_served(served: ServeProcess) -> None:
    began = time.monotonic()
    socks, seen = hold(served, CAP + 50)
    assert seen[:CAP] == ["nothing"] * CAP
    assert seen[CAP:] == ["HTTP/1.1 429"] * 50, seen
    assert time.monotonic() - began < 3
    refused = socks[-1].recv(4096)
    assert b"retry-after: " in refused.lower()
    for path in ("/healthz", "/api/devices"):
        status, took = served_elsewhere(served, path)
        assert status == 200 and took < 2, (path, status, took)
    assert await snapshot_elsewhere(served) < 5
    for i, sock in enumerate(socks):  # half close cleanly, half vanish with a reset
        sock.close() if i % 2 else reset(sock)
    time.sleep(0.5)
    again, seen = hold(served, CAP + 1)  # every slot came back
    assert seen == ["nothing"] * CAP + ["HTTP/1.1 429"], seen
    for sock in again:
        sock.close()


async def test_a_websocket_holds_its_slot_until_either_side_closes_it(served: ServeProcess) -> None:
    time.sleep(0.5)  # the previous test's connections gone
    headers, url = served.auth_headers(), served.ws_url("/ws/live?kinds=bts")
    screens = [await websockets.connect(url, additional_headers=headers, max_size=None) for _ in range(CAP)]
    for screen in screens:
        await asyncio.wait_for(screen.recv(), 5)  # upgraded and fed
    extra, seen = hold(served, 1)
    assert seen == ["HTTP/1.1 429"]  # the screens hold the address's slots
    extra[0].close()
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(url, additional_headers=headers)
    assert refused.value.response.status_code == 429
    assert await snapshot_elsewhere(served) < 5
    for screen in screens[:8]:  # the client closes
        await screen.close()
    for screen in screens[8:14]:  # the server closes (a message over 1 MiB: 1009)
        with pytest.raises(websockets.ConnectionClosed):  # on the send already, or on a read after it
            await screen.send("x" * (2 * 2**20))
            while True:
                await asyncio.wait_for(screen.recv(), 5)
    for screen in screens[14:]:  # the client vanishes
        screen.transport.abort()
    await asyncio.sleep(0.5)
    again, seen = hold(served, CAP + 1)
    assert seen == ["nothing"] * CAP + ["HTTP/1.1 429"], seen
    for sock in again:
        sock.close()
