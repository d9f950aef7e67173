"""Many large API answers at once, against a real ``ioc serve --ingest``.

    python -m benchmarks.heavy_answers [--clients 32] [--callers 32] [--rows 100000] [--route telemetry|devices]

Stores ``--rows`` raw readings of one device and as many devices (at most 10,000), then ``--clients``
connections from 127.0.0.1 each ask ``/api/telemetry`` (``--route devices``: ``/api/devices``) for all of them at
once (answers read whole), with ``--callers`` distinct tokens. Meanwhile a normal client from 127.0.0.2 asks
``/healthz``, an authenticated ``/api/devices`` and opens a screen (time to its snapshot), every 0.2 s. Prints the
heavy clients' statuses and times and the probes' worst times. A fresh migrated database, dropped afterwards.
Traffic only to 127.0.0.1, bounded by the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import asyncpg

from benchmarks.conn_flood import HOSTILE, probe, proc_figures, serve_process
from tests.conftest import BASE_DSN, create_database, drop_database
from tests.support.auth import make_token_sync
from tests.support.services import ServeProcess


async def seed(dsn: str, rows: int) -> None:
    """``rows`` readings of device ``heavy-1`` over the last 50 min (the raw range), ``rows`` devices (<= 10,000)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO devices (device_id, kind, first_seen, last_seen, lat, lon, state, state_reason, state_ts, "
            "last_seq) SELECT 'HV-TR-' || lpad(i::text, 6, '0'), 'traffic', now(), now(), 10 + i * 1e-5, 106, "
            "'online', 'reporting', now(), i FROM generate_series(1, least($1, 10000)) AS i", rows)
        await conn.execute(
            "INSERT INTO telemetry (ts, device_id, metric, value, seq) SELECT now() - make_interval(secs => i * 0.03), "
            "'heavy-1', 'm' || (i % 4), i, i FROM generate_series(1, $1) AS i", rows)
    finally:
        await conn.close()


def heavy(port: int, token: str, path: str) -> tuple[int | str, float, int]:
    """One heavy request read whole: (status or error, seconds, bytes)."""
    began = time.monotonic()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(HOSTILE, 0))
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, time.monotonic() - began, len(body)
    except OSError as err:
        return type(err).__name__, time.monotonic() - began, 0


def probing(srv: ServeProcess, token: str, probes: list[dict], done: threading.Event) -> None:
    """Probe as a normal client every 0.2 s until ``done``."""
    while not done.is_set():
        probes.append(probe(srv, token))
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--callers", type=int, default=32, help="distinct tokens the clients use")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--route", choices=("telemetry", "devices"), default="telemetry")
    parser.add_argument("--env", nargs="*", default=[], help="extra IOC_... settings for the server")
    args = parser.parse_args()
    dsn = asyncio.run(create_database(BASE_DSN))
    try:
        asyncio.run(seed(dsn, args.rows))
        srv, token = serve_process(dsn, "heavy_answers", args.env)
        tokens = [make_token_sync(dsn, "viewer", f"heavy-{i}") for i in range(args.callers)]
        try:
            srv.start()
            print(f"quiet: {proc_figures(srv.pid)} probe {probe(srv, token)}", flush=True)
            path = (f"/api/telemetry?device_id=heavy-1&limit={args.rows}" if args.route == "telemetry"
                    else f"/api/devices?limit={min(args.rows, 10_000)}")
            for _ in range(args.rounds):
                probes: list[dict] = []
                done = threading.Event()
                prober = threading.Thread(target=probing, args=(srv, token, probes, done))
                began = time.monotonic()
                with ThreadPoolExecutor(args.clients) as pool:
                    prober.start()
                    results = list(pool.map(lambda i: heavy(srv.port, tokens[i % len(tokens)], path),
                                            range(args.clients)))
                done.set()
                prober.join()
                took = time.monotonic() - began
                statuses = Counter(r[0] for r in results)
                ok = [r[1] for r in results if r[0] == 200] or [0.0]
                size = max(r[2] for r in results) / 2**20
                worst = {k: max((p[k][1] for p in probes), default=None) for k in ("healthz", "api", "snapshot")}
                print(f"{args.clients} x {path} in {took:.1f} s: {dict(statuses)}, 200s took "
                      f"{min(ok):.1f}-{max(ok):.1f} s, {size:.1f} MB "
                      f"each; RSS {proc_figures(srv.pid)[0]:.0f} MB; normal client worst {worst} over {len(probes)} "
                      f"probes", flush=True)
        finally:
            srv.stop()
    finally:
        asyncio.run(drop_database(BASE_DSN, dsn))


if __name__ == "__main__":
    main()
