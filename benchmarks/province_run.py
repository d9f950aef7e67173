"""A whole province on this machine: simulator -> Mosquitto -> ingest workers -> analytics -> alerts -> feed.

    python -m benchmarks.province_run                       # Hải Dương-sized province, real time, 5 minutes
    python -m benchmarks.province_run --minutes 3 --speed 4 --workers 2

The simulator plays the province preset (3,240 BTS cells at 1,582 sites, 1,000 cameras sending a
640x360 JPEG every minute, 500 traffic sensors) over a private Mosquitto with the project's queue
limits; ``ioc serve --ingest`` (API, live hub, numeric detectors, camera analysers in 2 processes,
alert engine, one ingest worker) and ``--workers - 1`` more ``ioc ingest`` processes share the load
through the ``$share`` group. A WebSocket client subscribed to everything counts frames. ``--speed``
runs the province's clock faster than real time (``--speed 4`` = four times the real load).

Prints what the simulator achieved, what each worker committed and its publish->commit lag, what the
analytics kept up with (snapshots analysed vs skipped), alerts and incidents raised, frames on the
feed, and CPU / memory per process. Everything on 127.0.0.1, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import websockets

from benchmarks.measure import committed, quantile, rss_mb, scrape
from tests.conftest import BASE_DSN, create_database, drop_database, ingest_env
from tests.support.services import IngestProcess, ServeProcess, free_port, private_mosquitto, wait_until

LAG = "ioc_ingest_lag_seconds"


async def _count_frames(url: str, seconds: float, out: dict[str, float]) -> None:
    deadline = time.monotonic() + seconds
    frames = 0
    async with websockets.connect(url, max_size=None, open_timeout=10) as ws:
        while time.monotonic() < deadline:
            try:
                batch = json.loads(await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                break
            frames += len(batch) if isinstance(batch, list) else 1
    out["frames"] = frames


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (the API's camera analyser processes)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            rest = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat.parent.name) == pid or int(rest[1]) == pid:
            total += (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _sample(name: str, samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    ap.add_argument("--workers", type=int, default=2, help="ingest workers in the share group (>= 1)")
    ap.add_argument("--processes", type=int, default=2, help="simulator processes")
    ap.add_argument("--keep", type=Path, default=Path("artifacts/province"), help="logs and stats go here")
    args = ap.parse_args(argv)
    args.keep.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    dsn = asyncio.run(create_database(BASE_DSN))
    try:
        with private_mosquitto() as port:
            group = f"prov-{uuid.uuid4().hex[:6]}"
            env = ingest_env(dsn, port, IOC_MQTT__SHARE_GROUP=group, IOC_MQTT__CLIENT_ID=f"{group}-0",
                             IOC_LOG_LEVEL="WARNING")
            with ServeProcess(env, args.keep / "serve.log") as api:
                extra = []
                for i in range(1, args.workers):
                    mport = free_port()
                    w = IngestProcess({**env, "IOC_INGEST__METRICS_PORT": str(mport)}, f"{group}-{i}",
                                      args.keep / f"ingest-{i}.log")
                    w.start()
                    wait_until(lambda p=mport: _ok(p), 60, what="worker metrics")
                    extra.append((w, mport))
                ports = [api.port] + [p for _, p in extra]
                pids = {"api (+ingest, analytics, alerts)": api.proc.pid if api.proc else 0}
                pids |= {f"ingest-{i + 1}": w.proc.pid if w.proc else 0 for i, (w, _) in enumerate(extra)}
                before = [scrape(p) for p in ports]
                cpu0 = {k: tree_cpu(v) for k, v in pids.items()}
                stats_file = args.keep / "simulator.json"
                sim = subprocess.Popen(
                    [sys.executable, "-m", "simulators", "--mqtt-url", f"mqtt://127.0.0.1:{port}", "--scale",
                     "province", "--duration", str(seconds), "--speed", str(args.speed), "--processes",
                     str(args.processes), "--random-incidents", "20", "--snapshot-interval", "60",
                     "--ground-truth", str(args.keep / "ground-truth.jsonl"), "--stats-json", str(stats_file),
                     "--report-every", "30"],
                    stdout=(args.keep / "simulator.log").open("wb"), stderr=subprocess.STDOUT)
                feed: dict[str, float] = {}
                t0 = time.monotonic()
                token = api.auth_headers()["Authorization"].removeprefix("Bearer ")
                asyncio.run(_count_frames(f"ws://127.0.0.1:{api.port}/ws/live?token={token}", seconds, feed))
                sim.wait(timeout=seconds + 120)
                sim_stats = json.loads(stats_file.read_text())
                sent = sim_stats["acked"]
                deadline = time.monotonic() + 120  # let the workers drain what is queued
                while time.monotonic() < deadline:
                    if sum(committed(scrape(p)) - committed(b) for p, b in zip(ports, before, strict=True)) >= sent:
                        break
                    time.sleep(1)
                drained = time.monotonic() - t0 - seconds
                after = [scrape(p) for p in ports]
                live = api.get("/api/incidents/live?limit=5000&members_limit=20")  # all of a run's, bounded
                cpu = {k: tree_cpu(v) - cpu0[k] for k, v in pids.items()}
                rss = {k: rss_mb(v) for k, v in pids.items()}
                for w, _ in extra:
                    w.stop()
        _report(args, sim_stats, ports, before, after, feed, cpu, rss, seconds, drained)
        truth = [json.loads(line) for line in (args.keep / "ground-truth.jsonl").read_text().splitlines()]
        kinds = Counter(g["kind"] for g in truth)
        queue = Counter(i["category"] for i in live)
        (args.keep / "live-incidents.json").write_text(json.dumps(live, indent=1, ensure_ascii=False))
        print(f"  incidents injected: {len(truth)} ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}); "
              f"live on the queue at the end: {len(live)} ({', '.join(f'{k} {n}' for k, n in sorted(queue.items()))})")
    finally:
        asyncio.run(drop_database(BASE_DSN, dsn))
    return 0


def _ok(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def _report(args: argparse.Namespace, sim: dict[str, float], ports: list[int], before: list[dict[str, float]],
            after: list[dict[str, float]], feed: dict[str, float], cpu: dict[str, float], rss: dict[str, float],
            seconds: float, drained: float) -> None:
    print(f"province x{args.speed:g} for {args.minutes:g} min: {sim['acked']:,.0f} messages acked by the broker "
          f"({sim['messages_per_s']:,.0f} msg/s, {sim['values_per_s']:,.0f} values/s), {sim['snapshots']:,.0f} "
          f"snapshots ({sim['snapshots_skipped']:,.0f} shed by the simulator)")
    total = 0.0
    for i, (b, a) in enumerate(zip(before, after, strict=True)):
        done = committed(a) - committed(b)
        total += done
        p50, p99 = quantile(0.5, b, a, LAG), quantile(0.99, b, a, LAG)
        print(f"  worker {i}: committed {done:,.0f} ({done / seconds:,.0f} msg/s); publish->commit p50 "
              f"{p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    print(f"  all workers: {total:,.0f} of {sim['acked']:,.0f} committed "
          f"({'all' if total >= sim['acked'] else 'NOT all'}; {max(drained, 0):.0f} s to drain after the run)")
    api_b, api_a = before[0], after[0]
    skipped = _sample("ioc_analytics_snapshots_skipped_total", api_a) - _sample(
        "ioc_analytics_snapshots_skipped_total", api_b)
    findings = _sample("ioc_analytics_findings_total", api_a) - _sample("ioc_analytics_findings_total", api_b)
    alerts = _sample("ioc_alerts_fired_total", api_a) - _sample("ioc_alerts_fired_total", api_b)
    print(f"  analytics: {findings:,.0f} findings, {skipped:,.0f} of {sim['snapshots']:,.0f} snapshots skipped "
          f"(camera shards busy); alerts fired {alerts:,.0f}, live incidents "
          f"{_sample('ioc_incidents_live', api_a):.0f}")
    print(f"  live feed: {feed.get('frames', 0):,.0f} frames to one client subscribed to everything "
          f"({feed.get('frames', 0) / seconds:,.0f}/s)")
    for name in cpu:
        print(f"  {name}: CPU {cpu[name] / seconds * 100:.0f}% of a core (with its child processes), "
              f"RSS {rss[name]:.0f} MB (main process)")


if __name__ == "__main__":
    raise SystemExit(main())
