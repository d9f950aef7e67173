"""Live-feed benchmark: N WebSocket clients subscribed to everything while a province publishes. Prints figures.

    python -m benchmarks.live_bench                       # 50 clients, 2,000 msg/s, then + 5 stalled clients
    python -m benchmarks.live_bench --clients 20 --rate 1000 --seconds 10

The load is the city simulator's province (3,240 BTS, 1,000 cameras, 500 traffic sensors: 4,740
devices) sending its telemetry, status and events at ``--rate`` msg/s in total,
through a private broker into ``ioc serve --ingest`` (ingest, analytics, alerts, live hub). Each telemetry
message is stamped with the wall clock when it is published; a reading's latency is the wall clock when
the WebSocket message carrying it has been received minus that stamp. Reported beside the latency: the
share of the published readings each client actually received as ``reading`` frames (the hub coalesces or
drops for a client that falls behind, and a latency over delivered frames alone would hide that).

The clients are kept cheap so that they measure the server rather than themselves (they share the 2 cores
with it): each message is read as bytes (no UTF-8 decoding, no JSON decoding into Python objects); every
``reading`` frame's publish stamp is found with a regular expression and frames of the other types are
counted with substring counts (C speed); the stamp of every 10th reading a client receives is parsed for
the latency (a systematic sample of all delivered readings, all of them counted). Clients run in several
processes; everything shares this machine, on 127.0.0.1 only: run it under ``nice`` and read it as "under
load".
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import socket
import statistics
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.ingest_bench import finish, pct, publish, start_for, wait_ready
from tests.conftest import create_database, drop_database, ingest_env
from tests.support.services import ServeProcess, private_mosquitto

BASE_DSN = os.environ.get("IOC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


Result = tuple[int, list[float], dict[str, int]]
#: A ``reading`` frame's ``ts`` (the publish stamp), which comes before its first nested object (``metrics``).
_READING_TS = re.compile(rb'\{"type":"reading",[^{]*?"ts":"([^"]+)"')
#: Frames counted by type with substring counts (C speed, no decoding): these, the readings, and the rest.
_COUNTED = {"device": b'{"type":"device"', "lagged": b'{"type":"lagged"', "snapshot": b'{"type":"snapshot"'}
_ANY_FRAME = b'{"type":"'
#: One reading in this many has its stamp parsed for the latency distribution (all are counted).
SAMPLE_EVERY = 10


def _clients(port: int, headers: dict[str, str], count: int, start_at: float, end_at: float,
             out: mp.Queue[list[Result]], done: MpEvent) -> None:
    """``count`` clients in one process; each reports (readings received, sampled latencies in ms, frames by
    type) for readings published from ``start_at`` on, listening until ``done`` is set (or ``end_at``)."""
    import websockets

    start_ms = start_at * 1000
    start_second = datetime.fromtimestamp(start_at, UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()

    async def one() -> Result:
        lat: list[float] = []
        types = dict.fromkeys((*_COUNTED, "reading", "other"), 0)
        received = 0
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/live", max_size=None, open_timeout=60,
                                      additional_headers=headers) as ws:
            while time.time() < end_at and not done.is_set():
                try:
                    raw = await asyncio.wait_for(ws.recv(decode=False), 0.5)
                except TimeoutError:
                    continue
                now = time.time() * 1000
                stamps = _READING_TS.findall(raw)
                counted = len(stamps)
                for name, pattern in _COUNTED.items():
                    types[name] += (n := raw.count(pattern))
                    counted += n
                types["reading"] += len(stamps)
                types["other"] += raw.count(_ANY_FRAME) - counted
                if not stamps:
                    continue
                if min(stamps)[:19] <= start_second:  # may hold readings from before the round: look closer
                    stamps = [s for s in stamps if _ms(s.decode()) >= start_ms]
                lat.extend(now - _ms(s.decode()) for s in stamps[(-received) % SAMPLE_EVERY::SAMPLE_EVERY])
                received += len(stamps)
        return received, lat, {k: v for k, v in types.items() if v}

    async def main() -> None:
        # How late this process's own loop runs (the host's scheduler, or its own work): a client process
        # that stalls stops reading its sockets, and the server sees its screens fall behind.
        stalls = {"stall_n": 0, "stall_ms": 0, "late_max_ms": 0}

        async def ticker() -> None:
            while True:
                due = time.monotonic() + 0.05
                await asyncio.sleep(0.05)
                late = (time.monotonic() - due) * 1000
                if start_at <= time.time():
                    stalls["late_max_ms"] = max(stalls["late_max_ms"], round(late))
                    if late > 100:
                        stalls["stall_n"] += 1
                        stalls["stall_ms"] += round(late)

        tick = asyncio.create_task(ticker())
        results = list(await asyncio.gather(*(one() for _ in range(count))))
        tick.cancel()
        results[0][2].update(stalls)  # once per process
        out.put(results)

    asyncio.run(main())


def _ms(ts: Any) -> float:
    return float(ts) if isinstance(ts, int | float) else datetime.fromisoformat(ts).timestamp() * 1000


def stalled_socket(port: int, headers: dict[str, str]) -> socket.socket:
    """A client that completes the WebSocket handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(b"GET /ws/live HTTP/1.1\r\nHost: ioc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 + extra.encode() + b"\r\n")
    return sock


def _committed(srv: ServeProcess) -> float:
    """Messages the service's ingest has committed (0 while it is too busy to answer /metrics)."""
    req = urllib.request.Request(srv.url + "/metrics", headers=srv.auth_headers())
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
    except OSError:  # timeouts included
        return 0.0
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "ioc_ingest_messages_committed_total")


def run_round(srv: ServeProcess, broker: int, clients: int, procs: int, rate: float, seconds: float,
              publishers: int, skip: int = 0) -> tuple[list[Result], int]:
    """One round: (per client (received, latencies, frame types), telemetry messages published).

    The clients listen until the service has committed everything published (so a backlog is waited
    for, not cut off) and 2 s more; ``skip`` continues the stream of an earlier round."""
    out: mp.Queue[list[Result]] = mp.Queue()
    done = mp.Event()
    total = int(rate * seconds)
    # The publishers generate the skipped part first, then start together on schedule (ingest_bench._publisher).
    go = mp.Event()
    run = publish(broker, total, publishers, rate=rate, restamp=True, start=start_for(total + skip), skip=skip, go=go)
    wait_ready(run)
    start_at = time.time() + 15.0  # let every client connect (token checked) and take its snapshot first
    end_at = start_at + seconds + 300.0  # a bound, should the service never catch up
    headers = srv.auth_headers()
    base = _committed(srv)
    workers = [mp.Process(target=_clients, args=(srv.port, headers, clients // procs, start_at, end_at, out, done))
               for _ in range(procs)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start_at - time.time()))
    go.set()
    sent, _, telemetry = finish(run, seconds + 600)
    deadline = time.time() + 300
    while _committed(srv) < base + sent and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(2.0)
    done.set()
    results = [r for _ in workers for r in out.get(timeout=120)]
    for w in workers:
        w.join()
    return results, telemetry


def describe(label: str, results: list[Result], published: int) -> float:
    lat = [x for _, xs, _ in results for x in xs]
    if not lat:
        print(f"{label}: no frames received")
        return float("nan")
    shares = sorted(n / max(published, 1) for n, _, _ in results)
    types: dict[str, int] = {}
    for _, _, t in results:
        for k, v in t.items():
            types[k] = types.get(k, 0) + v
    print(f"{label}: delivered {sum(n for n, _, _ in results) / max(published * len(results), 1):.1%} of "
          f"{published:,} readings x {len(results)} clients (worst client {shares[0]:.1%}); over delivered "
          f"frames publish->frame p50 {pct(lat, 0.5):.0f} ms, p99 {pct(lat, 0.99):.0f} ms, "
          f"mean {statistics.fmean(lat):.0f} ms")
    stalls = {k: types.pop(k, 0) for k in ("stall_n", "stall_ms", "late_max_ms")}
    print(f"    frames received, all clients: {', '.join(f'{k} {v:,}' for k, v in sorted(types.items()))}")
    print(f"    client processes' own loops late by >100 ms: {stalls['stall_n']} times, "
          f"{stalls['stall_ms'] / 1000:.1f} s in all (the clients starved: the server's figures include it)")
    return pct(lat, 0.99)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--client-processes", type=int, default=5)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--stalled", type=int, default=5)
    parser.add_argument("--publishers", type=int, default=2)
    args = parser.parse_args(argv)
    out = Path("artifacts/bench")
    out.mkdir(parents=True, exist_ok=True)
    with private_mosquitto() as broker:
        dsn = asyncio.run(create_database(BASE_DSN))
        # All the bench's clients share 127.0.0.1, where a control room's screens would each have an address.
        env = ingest_env(dsn, broker, IOC_LOG_LEVEL="WARNING", IOC_MQTT__CLIENT_ID=f"lb-{uuid.uuid4().hex[:6]}",
                         IOC_AUTH__WS_PER_CLIENT=str(args.clients + args.stalled + 10),
                         IOC_AUTH__CONNECTIONS_PER_CLIENT=str(args.clients + args.stalled + 256))
        try:
            with ServeProcess(env, out / "live-serve.log") as srv:
                print(f"live feed: {args.clients} clients subscribed to everything; the simulator's province "
                      f"(4,740 devices) at {args.rate:,.0f} msg/s, {args.seconds:.0f} s per round")
                # The province's first minute is mostly start-up (every device's status and position): sent
                # first, unmeasured, so that both rounds see steady telemetry and are comparable.
                prelude = 2 * 4740 + 2 * 5300
                sent0, _, _ = finish(publish(broker, prelude, args.publishers, rate=args.rate, restamp=True,
                                             start=start_for(prelude)), 900)
                deadline = time.time() + 600
                while _committed(srv) < sent0 and time.time() < deadline:  # its backlog gone first
                    time.sleep(1.0)
                n = int(args.rate * args.seconds)
                base = describe("  all clients reading ", *run_round(
                    srv, broker, args.clients, args.client_processes, args.rate, args.seconds, args.publishers,
                    skip=prelude))
                socks = [stalled_socket(srv.port, srv.auth_headers()) for _ in range(args.stalled)]
                with_stalled = describe(f"  + {args.stalled} stalled clients", *run_round(
                    srv, broker, args.clients, args.client_processes, args.rate, args.seconds, args.publishers,
                    skip=prelude + n))
                for s in socks:
                    s.close()
                print(f"  p99 change with stalled clients: {100 * (with_stalled - base) / base:+.0f}%")
        finally:
            asyncio.run(drop_database(BASE_DSN, dsn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
