"""Connections held open by one client address, against a real ``ioc serve --ingest``.

    python -m benchmarks.conn_flood [--counts 500,2000,5000] [--hold-s 3] [--env IOC_X=Y ...]

For each count N, from 127.0.0.1: N idle TCP connections (nothing sent), then N WebSocket handshakes to
``/ws/live`` whose answers are never read (``--kinds pipe``: N connections each sending pipelined ``/healthz``
requests, up to 4 MB, answers never read). Meanwhile a normal client from 127.0.0.2 (the whole 127/8 is local on
Linux) asks ``/healthz``, an authenticated ``/api/devices`` and opens a screen (time to its snapshot). Prints
what was accepted or refused, the probes' times, the server's RSS and open descriptors. A fresh migrated
database, dropped afterwards. Traffic only to 127.0.0.1, bounded by the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import resource
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from websockets.sync.client import connect as ws_connect

from tests.conftest import BASE_DSN, MQTT_URL, create_database, drop_database, ingest_env
from tests.support.auth import make_token_sync
from tests.support.services import ServeProcess

HOSTILE, NORMAL = "127.0.0.1", "127.0.0.2"


def proc_figures(pid: int) -> tuple[float, int]:
    """(RSS in MB, open descriptors) of the process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(status.split("VmRSS:")[1].split()[0]) / 1024
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def probe(srv: ServeProcess, token: str) -> dict[str, Any]:
    """Times (s) of a normal client's /healthz, /api/devices and screen snapshot from another address."""
    out: dict[str, Any] = {}
    for name, path, headers in (("healthz", "/healthz", {}),
                                ("api", "/api/devices", {"Authorization": f"Bearer {token}"})):
        began = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=15, source_address=(NORMAL, 0))
            conn.request("GET", path, headers=headers)
            status = conn.getresponse().status
            conn.close()
            out[name] = (status, round(time.monotonic() - began, 3))
        except OSError as err:
            out[name] = (type(err).__name__, round(time.monotonic() - began, 3))
    began = time.monotonic()
    try:
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=15, source_address=(NORMAL, 0))
        with ws_connect(srv.ws_url("/ws/live?kinds=bts"), sock=sock, open_timeout=15, max_size=None,
                        additional_headers={"Authorization": f"Bearer {token}"}) as screen:
            screen.recv(15)
        out["snapshot"] = ("ok", round(time.monotonic() - began, 3))
    except Exception as err:  # any failure is a figure here
        out["snapshot"] = (type(err).__name__, round(time.monotonic() - began, 3))
    return out


def open_many(srv: ServeProcess, n: int, head: bytes) -> tuple[list[socket.socket], int, float]:
    """N connections from HOSTILE, each sent ``head`` (maybe empty); (sockets, connect failures, seconds)."""
    socks: list[socket.socket] = []
    failed = 0
    began = time.monotonic()
    for _ in range(n):
        try:
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5, source_address=(HOSTILE, 0))
            if head:
                sock.sendall(head)
            socks.append(sock)
        except OSError:
            failed += 1
    return socks, failed, time.monotonic() - began


def statuses(socks: list[socket.socket]) -> dict[str, int]:
    """What each connection got so far (peeked, the rest stays unread): status line, closed or nothing."""
    counts: dict[str, int] = {}
    for sock in socks:
        sock.setblocking(False)
        try:
            got = sock.recv(12, socket.MSG_PEEK)
            key = got.decode(errors="replace") if got else "closed"
        except BlockingIOError:
            key = "nothing"
        except OSError as err:
            key = type(err).__name__
        counts[key] = counts.get(key, 0) + 1
    return counts


PIPE_BYTES = 4 * 2**20
PIPED = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def pipe(socks: list[socket.socket], budget: int = PIPE_BYTES) -> int:
    """Pipelined requests on each connection, as many as the server takes within ``budget`` bytes, answers unread."""
    chunk = PIPED * (65536 // len(PIPED))
    sent = 0
    for sock in socks:
        sock.setblocking(False)
        for _ in range(budget // len(chunk)):
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                break
    return sent


def run_one(srv: ServeProcess, token: str, n: int, kind: str, hold_s: float) -> None:
    head = b"" if kind in ("idle", "pipe") else (
        b"GET /ws/live?kinds=bts HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Authorization: Bearer " + token.encode() + b"\r\n\r\n")
    rss0, fd0 = proc_figures(srv.pid)
    socks, failed, took = open_many(srv, n, head)
    if kind == "pipe":
        print(f"      pipelined {pipe(socks) / 2**20:.1f} MB of requests, answers unread", flush=True)
    time.sleep(hold_s)
    rss1, fd1 = proc_figures(srv.pid)
    seen = probe(srv, token)
    got = statuses(socks)
    print(f"{kind:5} N={n:5}: opened {len(socks)} ({failed} failed) in {took:.1f} s; server RSS {rss0:.0f} -> "
          f"{rss1:.0f} MB, fds {fd0} -> {fd1}; answers {got}; normal client {seen}", flush=True)
    for sock in socks:
        sock.close()
    time.sleep(1.5)
    rss2, fd2 = proc_figures(srv.pid)
    print(f"      after close: RSS {rss2:.0f} MB, fds {fd2}; probe {probe(srv, token)}", flush=True)


def serve_process(dsn: str, name: str, env_items: list[str]) -> tuple[ServeProcess, str]:
    """An ``ioc serve`` on database ``dsn`` (not started yet) and an admin token for it; ``env_items`` are extra
    ``IOC_...=value`` settings; the server's log goes to ``artifacts/<name>/serve.log``."""
    port = int(MQTT_URL.rsplit(":", 1)[1])
    token = make_token_sync(dsn, "admin")
    extra = dict(item.split("=", 1) for item in env_items)
    env = ingest_env(dsn, port, IOC_MQTT__CLIENT_ID=f"{name}-{uuid.uuid4().hex[:6]}", IOC_LOG_LEVEL="WARNING",
                     IOC_TEST_ADMIN_TOKEN=token, **extra)
    log = Path("artifacts") / name
    log.mkdir(parents=True, exist_ok=True)
    return ServeProcess(env, log / "serve.log"), token


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="500,2000,5000")
    parser.add_argument("--hold-s", type=float, default=3.0, help="wait after opening (heads time out at 10 s)")
    parser.add_argument("--kinds", default="idle,ws", help="any of idle, ws, pipe")
    parser.add_argument("--server-nofile", type=int, help="the server open-files limit once up (root)")
    parser.add_argument("--env", nargs="*", default=[], help="extra IOC_... settings for the server")
    args = parser.parse_args()
    dsn = asyncio.run(create_database(BASE_DSN))
    try:
        srv, token = serve_process(dsn, "conn_flood", args.env)
        try:
            srv.start()
            if args.server_nofile:  # as a container would give it; with it IOC_AUTH__CONNECTIONS_MAX=half of it
                resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (args.server_nofile, args.server_nofile))
            print(f"quiet: {proc_figures(srv.pid)} probe {probe(srv, token)}", flush=True)
            for n in (int(c) for c in args.counts.split(",")):
                for kind in args.kinds.split(","):
                    run_one(srv, token, n, kind, args.hold_s)
        finally:
            srv.stop()
    finally:
        asyncio.run(drop_database(BASE_DSN, dsn))


if __name__ == "__main__":
    main()
