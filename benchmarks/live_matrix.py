"""The live feed across API replicas: screens (50, 200) x rate (2,000, 5,000 msg/s) x replicas (1, 2).

    python -m benchmarks.live_matrix [--screens 50 200] [--rates 2000 5000] [--replicas 1 2] [--seconds 10]

Each configuration runs ``ioc serve --role api`` replicas (REST, WebSocket, pages; each follows the broker
with its own live listener, docs/ha.md) on a private broker and a fresh database; the screens subscribe to
everything and are spread evenly over the replicas, as a load balancer would. Each set of replicas first
gets an unmeasured warm-up (the province's start-up: every device's status and position), so the screens'
snapshots hold the 4,740 devices and the measured rounds see steady telemetry. The city simulator's
province then publishes at the given rate; each telemetry message is stamped when it is published, and a
reading's latency is the wall clock when the WebSocket message carrying it was received minus that stamp
(``benchmarks.live_bench``'s cheap clients: no JSON decoding, every 10th reading's stamp sampled, all
counted). Reported: publish -> frame p50/p99 (and the largest sampled), the share of published readings
each screen received as ``reading`` frames, the ``lagged`` notices and coalesced ``device`` frames per
screen (a screen that falls behind is coalesced to the latest state of each device, never seconds behind),
and the CPU the replicas and the client processes used while publishing, in cores.
Everything, clients included, shares this 2-core machine: read the figures as a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.ingest_bench import finish, pct, publish, start_for, wait_ready
from benchmarks.live_bench import BASE_DSN, Result, _clients
from tests.conftest import create_database, drop_database, ingest_env
from tests.support.auth import bearer, make_token_sync
from tests.support.cluster import RoleProcess, unique_lease
from tests.support.services import ServiceProcess, private_mosquitto

#: The province's start-up messages (each device's status and position, twice), as ``live_bench``'s prelude.
WARMUP = 2 * 4740 + 2 * 5300


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (Linux /proc; 0 where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """What the replicas and the clients used from the first message published to the end of the round."""

    seconds: float  # from the first message published to 3 s after the last
    publish_s: float  # publishing alone
    cpu_replicas: float  # CPU seconds, all replicas
    cpu_clients: float
    frames: tuple[int, int] | None  # frames the hubs emitted and handed to screens (None: a hub did not answer)
    hubs: dict[str, float] | None  # the replicas' counters over the round (COUNTERS)

    def line(self, replicas: int) -> str:
        cpu = f"{self.cpu_replicas / self.seconds:.2f} / {self.cpu_clients / self.seconds:.2f}"
        if self.frames is None or not self.cpu_replicas:
            return f"{cpu} | n/a | n/a"
        return (f"{cpu} | {self.frames[0] / replicas / self.publish_s:,.0f} | "
                f"{self.frames[1] / self.cpu_replicas:,.0f}")


#: Counters of ``/api/live/stats`` summed over the replicas and differenced over a round.
COUNTERS = ("seq", "frames_out", "lagged_total", "lagged_on_socket", "loop_stalls", "loop_stall_s", "slow_sends",
            "send_wait_s", "intake_handled", "intake_shed", "intake_superseded")


def hub_stats(replicas: list[ServiceProcess], headers: dict[str, str]) -> dict[str, float] | None:
    """The replicas' live-feed counters, summed (``loop_late_max_s``: the largest); None when a replica is
    too busy to answer (not guessed)."""
    total = dict.fromkeys(COUNTERS, 0.0)
    total["loop_late_max_s"] = 0.0
    for r in replicas:
        req = urllib.request.Request(r.url + "/api/live/stats", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                stats = json.load(resp)
        except OSError:
            return None
        for key in COUNTERS:
            total[key] += stats.get(key, 0)
        total["loop_late_max_s"] = max(total["loop_late_max_s"], stats.get("loop_late_max_s", 0))
        total["intake_lag_max_ms"] = max(total.get("intake_lag_max_ms", 0), stats.get("intake_lag_max_ms", 0))
        for edge, n in stats.get("input_lag_counts", {}).items():
            total[f"lag<={edge}"] = total.get(f"lag<={edge}", 0) + n
        for edge, n in stats.get("output_lag_counts", {}).items():
            total[f"out<={edge}"] = total.get(f"out<={edge}", 0) + n
    return total


def run(replicas: list[ServiceProcess], headers: dict[str, str], broker: int, screens: int, rate: float,
        seconds: float, skip: int, procs_per_replica: int) -> tuple[list[Result], int, Usage]:
    """One configuration: the screens' results, the telemetry messages published, what it used."""
    out: mp.Queue[list[Result]] = mp.Queue()
    done = mp.Event()
    total = int(rate * seconds)
    # The publishers first generate the stream's earlier part (``skip``, ~50 us a message), then start together
    # on schedule (ingest_bench._publisher): counted in the round, that made a burst.
    go = mp.Event()
    publishers = publish(broker, total, 2, rate=rate, restamp=True, start=start_for(total + skip), skip=skip, go=go)
    wait_ready(publishers)
    start_at = time.time() + 12.0 + screens / 20  # every screen connected and holding its snapshot first
    end_at = start_at + seconds + 120.0
    per_proc = max(1, screens // (len(replicas) * procs_per_replica))
    workers = [mp.Process(target=_clients, args=(r.port, headers, per_proc, start_at, end_at, out, done))
               for r in replicas for _ in range(procs_per_replica)]
    for w in workers:
        w.start()
    time.sleep(max(0.0, start_at - time.time()))
    go.set()
    began = time.monotonic()
    counts0 = hub_stats(replicas, headers)
    cpu0 = (sum(cpu_seconds(r.pid) for r in replicas), sum(cpu_seconds(w.pid or 0) for w in workers))
    _, _, telemetry = finish(publishers, seconds + 600)
    publish_s = time.monotonic() - began
    time.sleep(3.0)  # the last frames on their way
    counts = hub_stats(replicas, headers)
    hubs = ({k: counts[k] - counts0[k] for k in counts if k in COUNTERS or k.startswith(("lag<=", "out<="))}
            | {"loop_late_max_s": counts["loop_late_max_s"],
                                                               "intake_lag_max_ms": counts["intake_lag_max_ms"]}
            if counts and counts0 else None)
    usage = Usage(max(time.monotonic() - began, 1e-3), publish_s, sum(cpu_seconds(r.pid) for r in replicas) - cpu0[0],
                  sum(cpu_seconds(w.pid or 0) for w in workers) - cpu0[1],
                  (int(hubs["seq"]), int(hubs["frames_out"])) if hubs else None, hubs)
    done.set()
    results = [r for _ in workers for r in out.get(timeout=180)]
    for w in workers:
        w.join()
    return results, telemetry, usage


def line(screens: int, rate: float, replicas: int, results: list[Result], published: int, usage: Usage) -> str:
    lat = [x for _, xs, _ in results for x in xs]
    shares = sorted(n / max(published, 1) for n, _, _ in results)
    mean_share = sum(n for n, _, _ in results) / max(published * len(results), 1)
    lagged = sum(t.get("lagged", 0) for _, _, t in results)
    devices = sum(t.get("device", 0) for _, _, t in results)
    latency = (f"{pct(lat, 0.5):,.0f} ms | {pct(lat, 0.99):,.0f} ms | {max(lat):,.0f} ms" if lat
               else "no readings | | ")
    return (f"| {screens} | {rate:,.0f} | {replicas} | {latency} | {mean_share:.1%} (worst screen {shares[0]:.1%}) | "
            f"{lagged / len(results):.1f} / {devices / len(results):,.0f} | {usage.line(replicas)} |")


def why(results: list[Result], usage: Usage) -> str:
    """Where the screens' delays came from: the replicas' loops and sends, and the client processes' loops."""
    stall_n = sum(t.get("stall_n", 0) for _, _, t in results)
    stall_ms = sum(t.get("stall_ms", 0) for _, _, t in results)
    late = max((t.get("late_max_ms", 0) for _, _, t in results), default=0)
    load = Path("/proc/loadavg").read_text().split()[0]
    h = usage.hubs
    server = ("replicas: n/a" if h is None else
              f"replicas: {h['lagged_total']:.0f} screens fell behind ({h['lagged_on_socket']:.0f} waiting for the "
              f"screen's socket), loop stalls >100 ms {h['loop_stalls']:.0f} "
              f"({h['loop_stall_s']:.1f} s, latest max {h['loop_late_max_s'] * 1000:.0f} ms since start), sends "
              f"waiting >100 ms {h['slow_sends']:.0f} ({h['send_wait_s']:.1f} s); input: handled "
              f"{h['intake_handled']:,.0f}, set aside late {h['intake_shed']:,.0f} (of which superseded "
              f"{h['intake_superseded']:,.0f}), oldest handled in order {h['intake_lag_max_ms']:.0f} ms since start; "
              f"publish -> replica input: {lag_shares(h, 'lag<=')}; batch flushed -> sent to the screen: "
              f"{lag_shares(h, 'out<=')}")
    return (f"    why: {server}; client processes: loop stalls >100 ms {stall_n} ({stall_ms / 1000:.1f} s, max "
            f"{late} ms); load {load}")


def lag_shares(hubs: dict[str, float], prefix: str) -> str:
    """The share within each lag edge of messages reaching the replicas (``lag<=``: device stamp -> the replica's
    live input: the publishers, the broker, the replicas' sockets) or of sends to screens (``out<=``: a batch
    flushed -> sent: the replicas' loops and sockets). The rest of a screen's latency is the 50 ms batch window
    and the client processes."""
    edges = [(k.removeprefix(prefix), v) for k, v in hubs.items() if k.startswith(prefix)]
    total = sum(v for _, v in edges)
    if not total:
        return "n/a"
    shares, running = [], 0.0
    for edge, n in edges[:-1]:
        running += n
        if edge in ("0.1", "0.25", "0.5", "1.0"):
            shares.append(f"<= {float(edge) * 1000:.0f} ms {running / total:.1%}")
    return ", ".join(shares)


def input_cost(messages: int = 20_000) -> str:
    """CPU per province message of a replica's live path (parsing, as the live listener does, and the hub's
    frames), in this process without broker or network: what a replica needs per message before any screen."""
    import itertools

    import paho.mqtt.client as mqtt

    from benchmarks.ingest_bench import _restamp, province_messages
    from ingest.guard import MetricNameGuard
    from ingest.handling import handle_message
    from ioc.geo import DEFAULT_CITY_FILE, City
    from ioc.live.hub import LiveHub

    hub, guard = LiveHub(City.load(DEFAULT_CITY_FILE).district_of), MetricNameGuard()
    raw = []
    for msg in itertools.islice(province_messages(0, 1, start_for(3 * messages)), 2 * messages):
        m = mqtt.MQTTMessage(topic=msg.topic.encode())
        m.payload = _restamp(msg, int(time.time() * 1000))
        raw.append(m)
    for m in raw[:messages]:  # warm-up: every device known, as in a running replica
        handle_message(m, datetime.now(UTC), guard, (hub.on_parsed,), stores=False)
    began = time.process_time()
    for m in raw[messages:]:
        handle_message(m, datetime.now(UTC), guard, (hub.on_parsed,), stores=False)
    per = (time.process_time() - began) / messages
    return f"live path (parse + hub frames), in process: {per * 1e6:.1f} us CPU per message, {messages:,} messages"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--screens", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--rates", type=float, nargs="+", default=[2000.0, 5000.0])
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--client-processes", type=int, default=2, help="client processes per replica")
    ap.add_argument("--cost", action="store_true", help="only the replica's CPU per message, in process")
    args = ap.parse_args(argv)
    if args.cost:
        print(input_cost())
        return 0
    logs = Path("artifacts/bench")
    logs.mkdir(parents=True, exist_ok=True)
    print("| screens | msg/s | replicas | p50 | p99 | max (sampled) | delivered share of readings | per screen: "
          "lagged notices / coalesced device frames | CPU cores: replicas / clients | hub frames/s per replica | "
          "frames to screens per replica CPU-second |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with private_mosquitto() as broker:
        dsn = asyncio.run(create_database(BASE_DSN))
        headers = bearer(make_token_sync(dsn, "viewer", "live-matrix"))
        skip = 0
        try:
            for count in args.replicas:
                env = ingest_env(dsn, broker, IOC_LOG_LEVEL="WARNING", IOC_CLUSTER__LEASE_NAME=unique_lease(),
                                 IOC_AUTH__WS_PER_CLIENT=str(max(args.screens) + 10),
                                 IOC_AUTH__CONNECTIONS_PER_CLIENT=str(max(args.screens) + 256),
                                 IOC_MQTT__CLIENT_ID=f"lm-{uuid.uuid4().hex[:6]}")
                replicas = [RoleProcess(env, "api", logs / f"live-matrix-api{count}-{i}.log", "").start()
                            for i in range(count)]
                try:
                    # Unmeasured warm-up: the province's start-up (every device's status and position) the first
                    # time, the stream's continuation after that, so the screens' snapshots hold the devices
                    # and the measured rounds see steady telemetry.
                    finish(publish(broker, WARMUP, 2, rate=5000.0, restamp=True, start=start_for(WARMUP + skip),
                                   skip=skip), 600)
                    skip += WARMUP
                    time.sleep(5.0)
                    for screens in args.screens:
                        for rate in args.rates:
                            results, published, usage = run(list(replicas), headers, broker, screens, rate,
                                                          args.seconds, skip, args.client_processes)
                            skip += int(rate * args.seconds)
                            print(line(screens, rate, count, results, published, usage), flush=True)
                            print(why(results, usage), flush=True)
                finally:
                    for r in replicas:
                        r.stop()
        finally:
            asyncio.run(drop_database(BASE_DSN, dsn))
    return 0


if __name__ == "__main__":
    sys.exit(main())
