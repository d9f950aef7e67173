"""Live-feed benchmark: N WebSocket clients subscribed to everything while M msg/s flow. Prints figures.

    python -m benchmarks.live_bench                       # 50 clients, 2,000 msg/s, then + 5 stalled clients
    python -m benchmarks.live_bench --clients 20 --rate 1000 --seconds 10

Latency is publish -> frame at the client: each reading's ts is the wall clock when it is handed to
mosquitto_pub (ms resolution), compared with the wall clock when the client has parsed the frame.
Clients run in several processes so the measuring side is not the bottleneck; everything (publishers,
broker, PostgreSQL, `ioc serve --ingest`, clients) shares this machine, on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson

from tests.conftest import create_database, drop_database, ingest_env
from tests.support.services import ServeProcess, private_mosquitto

BASE_DSN = os.environ.get("IOC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _clients(port: int, count: int, seconds: float, start_at: float, out: mp.Queue) -> None:
    """``count`` clients in one process; report latencies (ms) of readings received in the window."""
    import websockets

    async def one() -> list[float]:
        lat: list[float] = []
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/live", max_size=None) as ws:
            end = start_at + seconds
            while time.time() < end + 2:
                try:
                    raw = await asyncio.wait_for(ws.recv(), max(0.1, end + 2 - time.time()))
                except TimeoutError:
                    break
                now = time.time()
                for frame in orjson.loads(raw):
                    if frame.get("type") == "reading" and start_at <= now <= end:
                        lat.append(now * 1000 - _ms(frame["ts"]))
        return lat

    async def main() -> None:
        results = await asyncio.gather(*(one() for _ in range(count)))
        out.put([x for r in results for x in r])

    asyncio.run(main())


def _ms(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts).timestamp() * 1000


def _publish(port: int, rate: float, seconds: float, devices: int = 200) -> None:
    """mosquitto_pub processes fed at ``rate`` msg/s in total, stamped with the wall clock."""
    procs = [subprocess.Popen(["mosquitto_pub", "-p", str(port), "-q", "1", "-V", "mqttv5", "-M", "1000", "-t",
                               f"ioc/v1/traffic/live-{uuid.uuid4().hex[:4]}-{i}/telemetry", "-l"],
                              stdin=subprocess.PIPE) for i in range(4)]
    start = time.monotonic()
    i = 0
    last_ms = [0] * len(procs)
    while time.monotonic() - start < seconds:
        k = i % len(procs)
        ms = max(int(time.time() * 1000), last_ms[k] + 1)
        last_ms[k] = ms
        line = orjson.dumps({"ts": ms, "seq": i, "metrics": {"speed_kmh": 40.0 + i % 30, "flow_veh_h": 900.0},
                             "lat": 20.86, "lon": 106.68}) + b"\n"
        procs[k].stdin.write(line)  # type: ignore[union-attr]
        procs[k].stdin.flush()  # type: ignore[union-attr]
        i += 1
        ahead = i / rate - (time.monotonic() - start)
        if ahead > 0.001:
            time.sleep(ahead)
    for p in procs:
        p.stdin.close()  # type: ignore[union-attr]
        p.wait(30)


def stalled_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET /ws/live HTTP/1.1\r\nHost: ioc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return sock


def run_round(srv: ServeProcess, broker: int, clients: int, procs: int, rate: float, seconds: float) -> list[float]:
    out: mp.Queue = mp.Queue()
    start_at = time.time() + 3.0  # let every client connect and take its snapshot first
    workers = [mp.Process(target=_clients, args=(srv.port, clients // procs, seconds, start_at, out))
               for _ in range(procs)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start_at - time.time() - 0.5))
    pub = threading.Thread(target=_publish, args=(broker, rate, seconds + 1.0))
    pub.start()
    lat = [x for _ in workers for x in out.get(timeout=seconds + 60)]
    pub.join()
    for w in workers:
        w.join()
    return lat


def describe(label: str, lat: list[float], clients: int, rate: float, seconds: float) -> float:
    if not lat:
        print(f"{label}: no frames received")
        return float("nan")
    lat.sort()
    p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
    expected = clients * rate * seconds
    print(f"{label}: {len(lat):,} frames ({len(lat) / expected:.0%} of {expected:,.0f} expected); "
          f"publish->frame p50 {p50:.0f} ms, p99 {p99:.0f} ms, mean {statistics.fmean(lat):.0f} ms")
    return p99


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--client-processes", type=int, default=5)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--stalled", type=int, default=5)
    args = parser.parse_args(argv)
    out = Path("artifacts/bench")
    out.mkdir(parents=True, exist_ok=True)
    with private_mosquitto() as broker:
        dsn = asyncio.run(create_database(BASE_DSN))
        env = ingest_env(dsn, broker, IOC_LOG_LEVEL="WARNING", IOC_MQTT__CLIENT_ID=f"lb-{uuid.uuid4().hex[:6]}")
        try:
            with ServeProcess(env, out / "live-serve.log") as srv:
                print(f"live feed: {args.clients} clients subscribed to everything, {args.rate:,.0f} msg/s, "
                      f"{args.seconds:.0f} s per round")
                base = describe("  all clients reading ", run_round(srv, broker, args.clients, args.client_processes,
                                                                   args.rate, args.seconds),
                                args.clients, args.rate, args.seconds)
                socks = [stalled_socket(srv.port) for _ in range(args.stalled)]
                with_stalled = describe(f"  + {args.stalled} stalled clients",
                                        run_round(srv, broker, args.clients, args.client_processes, args.rate,
                                                  args.seconds), args.clients, args.rate, args.seconds)
                for s in socks:
                    s.close()
                print(f"  p99 change with stalled clients: {100 * (with_stalled - base) / base:+.0f}%")
        finally:
            asyncio.run(drop_database(BASE_DSN, dsn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
