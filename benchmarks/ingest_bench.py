"""Ingest benchmark: publisher, broker, database and ingest on this machine. Prints figures.

    python -m benchmarks.ingest_bench                 # all phases
    python -m benchmarks.ingest_bench --phase throughput --messages 200000

Phases:
  throughput  publish flat out (QoS 1, several publisher processes); compare messages/s committed by
              `ioc ingest` (ack after commit) with a bare paho subscriber that stores nothing, in the same run.
  latency     publish at a fixed rate (default 2,000 msg/s); p50/p99 publish->commit from the worker's
              ioc_ingest_lag_seconds histogram (interpolated as Prometheus' histogram_quantile does).
  memory      1,000,000 messages; the worker's RSS sampled every second.

Uses a private Mosquitto with the project's queue limits and a fresh database on IOC_BENCH_DATABASE_URL
(default postgresql://postgres@127.0.0.1:5432/postgres); everything on 127.0.0.1, bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import create_database, drop_database, ingest_env
from tests.support.services import IngestProcess, free_port, private_mosquitto, wait_until

BASE_DSN = os.environ.get("IOC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


# --- load generation (child processes) -----------------------------------------------------------------

def _line(i: int, ts: int) -> bytes:
    return orjson.dumps({"ts": ts, "seq": i, "metrics": {
        "flow_veh_h": 1200.0 + i % 300, "speed_kmh": 40.0 + i % 20, "occupancy_pct": 20.5,
        "queue_len_m": 15.0, "heavy_vehicle_pct": 7.5}}) + b"\n"


def _feed(proc: subprocess.Popen[bytes], count: int, rate: float, data: bytes | None,
          release: threading.Event) -> None:
    """Feed one ``mosquitto_pub -l``: pre-built ``data`` flat out, or ``count`` lines at ``rate``.

    At a fixed rate each reading is stamped with the wall clock when it is written (latency phase).
    stdin stays open until ``release`` is set: at EOF ``mosquitto_pub -l`` exits at once and drops
    whatever is still queued in it (seen: 15k of 80k lines delivered), so the caller releases it only
    once everything is committed.
    """
    assert proc.stdin is not None
    if data is not None:
        proc.stdin.write(data)
    else:
        start, last_ms = time.monotonic(), 0
        for i in range(count):
            last_ms = max(int(time.time() * 1000), last_ms + 1)
            proc.stdin.write(_line(i, last_ms))
            proc.stdin.flush()
            ahead = (i + 1) / rate - (time.monotonic() - start)
            if ahead > 0.001:
                time.sleep(ahead)
    proc.stdin.flush()
    release.wait()
    proc.stdin.close()


def _bare_subscriber(port: int, expected: int, out: mp.Queue, ready: mp.Event) -> None:
    """The ceiling: receive the same stream at QoS 1 with automatic acks and store nothing."""
    times: list[float] = []

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        times.append(time.monotonic())

    def on_connect(client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        client.subscribe("ioc/v1/#", qos=1)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-bare-{uuid.uuid4().hex[:4]}",
                         protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *a: ready.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 900
    while len(times) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    client.loop_stop()
    out.put((len(times), times[0] if times else 0.0, times[-1] if times else 0.0))


# --- measurement helpers -------------------------------------------------------------------------------

def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics, parsed by prometheus_client, as {sample name with sorted labels: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {_key(s.name, s.labels): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _key(name: str, labels: dict[str, str]) -> str:
    return name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")


def committed(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items()
               if k == "ioc_ingest_messages_committed_total" or k.startswith("ioc_ingest_messages_committed_total{"))


def quantile(q: float, before: dict[str, float], after: dict[str, float], name: str) -> float:
    """histogram_quantile over the increase of ``name`` between two scrapes."""
    buckets = []
    prefix = f'{name}_bucket{{le="'
    for key, value in after.items():
        if key.startswith(prefix):
            le = key[len(prefix):].split('"', 1)[0]
            buckets.append((float(le), value - before.get(key, 0.0)))  # float("+Inf") is inf
    buckets.sort()
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- phases --------------------------------------------------------------------------------------------

@dataclass
class Publishing:
    """One mosquitto_pub process and the thread feeding it lines."""

    proc: subprocess.Popen[bytes]
    feeder: threading.Thread
    release: threading.Event

    def join(self) -> None:
        self.release.set()
        self.feeder.join()
        self.proc.wait(120)


class Rig:
    """Broker + database + worker, started once for all phases."""

    def __init__(self, stack_dir: Path) -> None:
        self.dir = stack_dir
        self.metrics_port = free_port()

    def __enter__(self) -> Rig:
        self._broker = private_mosquitto()
        self.port = self._broker.__enter__()
        self.dsn = asyncio.run(create_database(BASE_DSN))
        env = ingest_env(self.dsn, self.port, IOC_INGEST__METRICS_PORT=str(self.metrics_port),
                         IOC_LOG_LEVEL="WARNING")
        profile = os.environ.get("IOC_BENCH_PROFILE")  # write a cProfile of the worker to this file
        self.worker = IngestProcess(env, f"bench-{uuid.uuid4().hex[:6]}", self.dir / "ingest.log",
                                    ("-m", "cProfile", "-o", profile) if profile else ())
        self.worker.start()
        wait_until(lambda: _scrape_ok(self.metrics_port), 60, what="worker metrics")
        wait_until(lambda: scrape(self.metrics_port).get("ioc_ingest_mqtt_connected") == 1.0, 60, what="mqtt")
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        asyncio.run(drop_database(BASE_DSN, self.dsn))
        self._broker.__exit__(None, None, None)

    def publish(self, total: int, publishers: int, rate: float) -> list[Publishing]:
        """Start ``publishers`` mosquitto_pub processes (one device each) sharing ``total`` messages."""
        per = total // publishers
        base_ms = int(time.time() * 1000) - 2 * per
        # Flat out: build every line first so JSON encoding in this process does not cap the rate.
        data = None if rate else b"".join(_line(i, base_ms + i) for i in range(per))
        runs = []
        for i in range(publishers):
            topic = f"ioc/v1/traffic/bench-{uuid.uuid4().hex[:6]}-{i}/telemetry"
            proc = subprocess.Popen(["mosquitto_pub", "-p", str(self.port), "-q", "1", "-V", "mqttv5", "-M", "1000",
                                     "-t", topic, "-l"], stdin=subprocess.PIPE)
            release = threading.Event()
            feeder = threading.Thread(target=_feed, args=(proc, per, rate / publishers, data, release), daemon=True)
            feeder.start()
            runs.append(Publishing(proc, feeder, release))
        return runs

    def wait_committed(self, target: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = committed(scrape(self.metrics_port))
            if done >= target:
                return time.monotonic()
            time.sleep(0.05)
        raise TimeoutError(f"only {committed(scrape(self.metrics_port)):.0f} of {target:.0f} committed")


def _scrape_ok(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def phase_throughput(rig: Rig, total: int, publishers: int) -> None:
    ready, out = mp.Event(), mp.Queue()
    bare = mp.Process(target=_bare_subscriber, args=(rig.port, total, out, ready))
    bare.start()
    ready.wait(30)
    base = committed(scrape(rig.metrics_port))
    cpu0 = cpu_seconds(rig.worker.proc.pid)  # type: ignore[union-attr]
    t0 = time.monotonic()
    procs = rig.publish(total, publishers, rate=0)
    # The committed rate over the middle 80 % of the stream avoids start-up and tail effects.
    t10 = rig.wait_committed(base + total * 0.1, 900)
    t90 = rig.wait_committed(base + total * 0.9, 900)
    rig.wait_committed(base + total, 900)
    for p in procs:
        p.join()
    count, first, last = out.get(timeout=900)
    bare.join()
    ingest_rate = total * 0.8 / (t90 - t10)
    cpu = cpu_seconds(rig.worker.proc.pid) - cpu0  # type: ignore[union-attr]
    bare_rate = count / max(last - first, 1e-9)
    print(f"throughput: {total} msgs x 5 metrics, {publishers} mosquitto_pub processes, QoS 1, ack after commit")
    print(f"  ingest committed : {ingest_rate:9,.0f} msg/s  = {ingest_rate * 5:10,.0f} values/s")
    print(f"  bare subscriber  : {bare_rate:9,.0f} msg/s  (received {count}, stores nothing)")
    print(f"  ratio            : {ingest_rate / bare_rate:.2f}")
    print(f"  worker CPU       : {cpu / total * 1e6:9.0f} us/msg  (so one core sustains ~{total / cpu:,.0f} msg/s)")
    print(f"  wall time        : {time.monotonic() - t0:.1f} s")


def phase_latency(rig: Rig, rate: float, seconds: float) -> None:
    total = int(rate * seconds)
    before = scrape(rig.metrics_port)
    base = committed(before)
    procs = rig.publish(total, 8, rate=rate)
    rig.wait_committed(base + total, seconds + 120)
    for p in procs:
        p.join()
    after = scrape(rig.metrics_port)
    p50 = quantile(0.5, before, after, "ioc_ingest_lag_seconds")
    p99 = quantile(0.99, before, after, "ioc_ingest_lag_seconds")
    print(f"latency: {total} msgs at {rate:,.0f} msg/s; publish->commit p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms (ms-resolution device ts, histogram-interpolated)")


def phase_memory(rig: Rig, total: int, publishers: int) -> None:
    pid = rig.worker.proc.pid  # type: ignore[union-attr]
    base = committed(scrape(rig.metrics_port))
    samples = [(0.0, rss_mb(pid))]
    t0 = time.monotonic()
    procs = rig.publish(total, publishers, rate=0)
    while committed(scrape(rig.metrics_port)) < base + total:
        time.sleep(1.0)
        samples.append((time.monotonic() - t0, rss_mb(pid)))
        if time.monotonic() - t0 > 1200:
            raise TimeoutError("memory phase took too long")
    for p in procs:
        p.join()
    quarter = [s[1] for s in samples[len(samples) // 4: len(samples) // 2]]
    last = [s[1] for s in samples[-len(samples) // 4:]]
    print(f"memory: {total:,} msgs in {samples[-1][0]:.0f} s; worker RSS start {samples[0][1]:.0f} MB, "
          f"peak {max(s[1] for s in samples):.0f} MB, 2nd-quarter mean {sum(quarter) / len(quarter):.0f} MB, "
          f"last-quarter mean {sum(last) / len(last):.0f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["all", "throughput", "latency", "memory"], default="all")
    parser.add_argument("--messages", type=int, default=200_000, help="throughput phase size")
    parser.add_argument("--publishers", type=int, default=4, help="mosquitto_pub processes (one device each)")
    parser.add_argument("--rate", type=float, default=2000.0, help="latency phase rate (msg/s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="latency phase duration")
    parser.add_argument("--memory-messages", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    out = Path("artifacts/bench")
    out.mkdir(parents=True, exist_ok=True)
    with Rig(out) as rig:
        if args.phase in ("all", "throughput"):
            phase_throughput(rig, args.messages, args.publishers)
        if args.phase in ("all", "latency"):
            phase_latency(rig, args.rate, args.seconds)
        if args.phase in ("all", "memory"):
            phase_memory(rig, args.memory_messages, args.publishers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
