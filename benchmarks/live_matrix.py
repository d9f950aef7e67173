"""The live feed across API replicas: screens (50, 200) x rate (2,000, 5,000 msg/s) x replicas (1, 2).

    python -m benchmarks.live_matrix [--screens 50 200] [--rates 2000 5000] [--replicas 1 2] [--seconds 10]

Each configuration runs ``ioc serve --role api`` replicas (REST, WebSocket, pages; each follows the broker
with its own live listener, docs/ha.md) on a private broker and a fresh database; the screens subscribe to
everything and are spread evenly over the replicas, as a load balancer would. The city simulator's province
(4,740 devices) publishes at the given rate; each telemetry message is stamped when it is published, and a
screen's latency is the wall clock when it has parsed the frame minus that stamp (``benchmarks.live_bench``'s
clients). Reported: publish -> frame p50/p99 over delivered frames, and the share of published readings each
screen received (a lagging screen is coalesced to the latest state of each device, never seconds behind).
Everything, clients included, shares this 2-core machine: read the figures as a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
import uuid
from pathlib import Path

from benchmarks.ingest_bench import finish, pct, publish, start_for
from benchmarks.live_bench import BASE_DSN, Result, _clients
from tests.conftest import create_database, drop_database, ingest_env
from tests.support.auth import bearer, make_token_sync
from tests.support.cluster import RoleProcess, unique_lease
from tests.support.services import private_mosquitto


def run(replicas: list[RoleProcess], headers: dict[str, str], broker: int, screens: int, rate: float,
        seconds: float, skip: int, procs_per_replica: int) -> tuple[list[Result], int]:
    """One configuration: the screens' results and the telemetry messages published."""
    out: mp.Queue[list[Result]] = mp.Queue()
    done = mp.Event()
    start_at = time.time() + 12.0 + screens / 20  # every screen connected and holding its snapshot first
    end_at = start_at + seconds + 120.0
    per_proc = max(1, screens // (len(replicas) * procs_per_replica))
    workers = [mp.Process(target=_clients, args=(r.port, headers, per_proc, start_at, end_at, out, done))
               for r in replicas for _ in range(procs_per_replica)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start_at - time.time()))
    total = int(rate * seconds)
    _, _, telemetry = finish(publish(broker, total, 2, rate=rate, restamp=True, start=start_for(total + skip),
                                        skip=skip), seconds + 600)
    time.sleep(3.0)  # the last frames on their way
    done.set()
    results = [r for _ in workers for r in out.get(timeout=180)]
    for w in workers:
        w.join()
    return results, telemetry


def line(screens: int, rate: float, replicas: int, results: list[Result], published: int) -> str:
    lat = [x for _, xs, _ in results for x in xs]
    if not lat:
        return f"| {screens} | {rate:,.0f} | {replicas} | no frames | | |"
    shares = sorted(n / max(published, 1) for n, _, _ in results)
    mean_share = sum(n for n, _, _ in results) / max(published * len(results), 1)
    return (f"| {screens} | {rate:,.0f} | {replicas} | {pct(lat, 0.5):,.0f} ms | {pct(lat, 0.99):,.0f} ms | "
            f"{mean_share:.1%} (worst screen {shares[0]:.1%}) |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--screens", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--rates", type=float, nargs="+", default=[2000.0, 5000.0])
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--client-processes", type=int, default=2, help="client processes per replica")
    args = ap.parse_args(argv)
    logs = Path("artifacts/bench")
    logs.mkdir(parents=True, exist_ok=True)
    print("| screens | msg/s | replicas | p50 | p99 | delivered share of readings |")
    print("|---|---|---|---|---|---|")
    with private_mosquitto() as broker:
        dsn = asyncio.run(create_database(BASE_DSN))
        headers = bearer(make_token_sync(dsn, "viewer", "live-matrix"))
        skip = 0
        try:
            for count in args.replicas:
                env = ingest_env(dsn, broker, IOC_LOG_LEVEL="WARNING", IOC_CLUSTER__LEASE_NAME=unique_lease(),
                                 IOC_AUTH__WS_PER_CLIENT=str(max(args.screens) + 10),
                                 IOC_MQTT__CLIENT_ID=f"lm-{uuid.uuid4().hex[:6]}")
                replicas = [RoleProcess(env, "api", logs / f"live-matrix-api{count}-{i}.log", "").start()
                            for i in range(count)]
                try:
                    for screens in args.screens:
                        for rate in args.rates:
                            results, published = run(replicas, headers, broker, screens, rate, args.seconds, skip,
                                                     args.client_processes)
                            skip += int(rate * args.seconds)
                            print(line(screens, rate, count, results, published), flush=True)
                finally:
                    for r in replicas:
                        r.stop()
        finally:
            asyncio.run(drop_database(BASE_DSN, dsn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
