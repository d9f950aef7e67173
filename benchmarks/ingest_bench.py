"""Ingest benchmark on a province's traffic: broker, database and ingest on this machine. Prints figures.

    python -m benchmarks.ingest_bench                 # all phases
    python -m benchmarks.ingest_bench --phase throughput --messages 200000

The load is the city simulator's province (3,240 BTS cells, 1,000 cameras, 500 traffic sensors: 4,740
devices, each on its own topics) and the messages it sends: telemetry (9 / 4 / 5 metrics), status and
events, as JSON, QoS 1. Camera snapshots are left out (``benchmarks/camera_speed.py`` measures them).
Publishers are separate processes, each owning a share of the devices.

Phases:
  throughput  The same stream is queued at the broker for three offline persistent sessions, then drained
              by each consumer ALONE: a bare paho subscriber that stores nothing, ``mosquitto_sub`` (C, the
              fastest consumer this broker has here), then ``ioc ingest`` (ack after commit). None is paced by
              the publishers or competes with another. Rates over the middle 80 % of each drain.
  latency     Publish at a fixed rate (default 2,000 msg/s), each telemetry message stamped with the wall
              clock when it is published. Every traffic sensor's rows are polled from the database every
              20 ms; latency = first seen committed - published, per message (no histogram buckets).
  memory      1,000,000 messages flat out; the worker's RSS sampled every second.

Uses a private Mosquitto with the project's queue limits and a fresh database on IOC_BENCH_DATABASE_URL
(default postgresql://postgres@127.0.0.1:5432/postgres); everything on 127.0.0.1, bounded in count and time.
On a shared machine run it under ``nice`` and read the figures as "under load".
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from benchmarks.measure import committed, cpu_seconds, pct, rss_mb, scrape
from simulators.city import build_city
from simulators.fleet import Fleet, FleetOptions, Message
from simulators.scenario import Scenario
from tests.conftest import create_database, drop_database, ingest_env
from tests.support.services import IngestProcess, free_port, private_mosquitto, wait_until

BASE_DSN = os.environ.get("IOC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SESSION_S = 3600  # broker keeps the offline sessions (and their queues) this long
PER_SIM_MINUTE = 5300  # about how many messages a province sends per simulated minute (no snapshots)


# --- the province's messages (child processes) -----------------------------------------------------------

def province_messages(shard: int, shards: int, start: float, scale: str = "province") -> Iterator[Message]:
    """The simulator's messages of this shard's devices from ``start`` on, minute after minute (no snapshots)."""
    city = build_city(Scenario(scale=scale))
    mine = {d.id for i, d in enumerate(city.devices) if i % shards == shard}
    fleet = Fleet(city, city.devices, [], FleetOptions(offline_on_exit=False, snapshots=False))
    for out in fleet.start(start):
        if isinstance(out, Message) and out.device_id in mine:
            yield out
    k = 0
    while True:
        k += 1
        for out in fleet.advance(start + 60.0 * k - 1e-6):
            if isinstance(out, Message) and out.device_id in mine:
                yield out


def _restamp(msg: Message, now_ms: int) -> bytes:
    """A telemetry payload stamped with the publish time (latency phase); other channels as they are."""
    if msg.channel != "telemetry":
        return msg.payload
    doc = orjson.loads(msg.payload)
    doc["ts"] = now_ms
    return orjson.dumps(doc)


def _publisher(port: int, shard: int, shards: int, start: float, count: int, rate: float, restamp: bool,
               out: mp.Queue[tuple[int, float, int]], skip: int = 0, ready: mp.Queue[int] | None = None,
               go: MpEvent | None = None) -> None:
    """Publish ``count`` messages of this shard (QoS 1), at ``rate`` msg/s or flat out; wait for every PUBACK.

    ``skip``: leave out the shard's first messages (a later round continues the stream: the devices'
    sequence numbers go on, so the live hub does not take the readings for redeliveries). With ``go``, the
    publisher says it is ``ready`` once the skipped part is generated, and starts when ``go`` is set."""
    acked = [0]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{shard}-{uuid.uuid4().hex[:4]}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    messages = province_messages(shard, shards, start)
    # The simulator's set-up and the skipped part of the stream are generated before the pacing clock starts.
    # Counted against the schedule (as they were), a later round's skip (~45 us per message) put the publisher
    # seconds behind, and it caught up by sending seconds' worth of messages at once: a burst that made every
    # screen of the live benchmarks fall behind, worse with each round.
    for _ in range(skip):
        next(messages)
    first = next(messages)  # the set-up happens at the first message
    if ready is not None and go is not None:
        ready.put(shard)
        go.wait(900)
    t0 = time.monotonic()
    sent = telemetry = 0
    behind = 0.0
    for msg in itertools.chain((first,), messages):
        if sent >= count:
            break
        if rate:
            ahead = sent / rate - (time.monotonic() - t0)
            if ahead > 0.001:
                time.sleep(ahead)
            behind = max(behind, -ahead)
        payload = _restamp(msg, int(time.time() * 1000)) if restamp else msg.payload
        client.publish(msg.topic, payload, qos=1, retain=msg.retain)
        sent += 1
        telemetry += msg.channel == "telemetry"
        while not rate and sent - acked[0] > 5000:  # flat out: stay a bounded distance ahead of the broker
            time.sleep(0.001)
    if behind > 0.5:  # the rate was not kept: what follows the publisher saw bursts
        print(f"publisher {shard}: fell {behind:.1f} s behind its {rate:,.0f} msg/s schedule", file=sys.stderr)
    deadline = time.monotonic() + 600
    while acked[0] < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    elapsed = time.monotonic() - t0
    client.loop_stop()
    client.disconnect()
    out.put((sent, elapsed, telemetry))


def publish(port: int, total: int, publishers: int, rate: float, restamp: bool, start: float,
            skip: int = 0, go: MpEvent | None = None) -> list[Any]:
    """Start the publisher processes sharing ``total`` messages (and ``rate``), after the first ``skip``
    of the stream, as soon as they are ready or (``go``) when it is set, after :func:`wait_ready`;
    returns (processes, queue, ready queue)."""
    out: mp.Queue[tuple[int, float, int]] = mp.Queue()
    ready: mp.Queue[int] = mp.Queue()
    procs = [mp.Process(target=_publisher, args=(port, i, publishers, start, total // publishers,
                                                  rate / publishers, restamp, out, skip // publishers, ready, go),
                         daemon=True)
             for i in range(publishers)]
    for p in procs:
        p.start()
    return [procs, out, ready]


def wait_ready(run: list[Any], timeout: float = 900) -> None:
    """Until every publisher of ``run`` (started with ``go``) has generated what it skips."""
    for _ in run[0]:
        run[2].get(timeout=timeout)


def finish(run: list[Any], timeout: float = 900) -> tuple[int, float, int]:
    """Wait for the publishers: (messages acked by the broker, slowest publisher's seconds, telemetry messages)."""
    procs, out = run[0], run[1]
    results = [out.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(30)
    return sum(r[0] for r in results), max(r[1] for r in results), sum(r[2] for r in results)


def _bare_session(port: int, client_id: str, drain: int, out: mp.Queue[tuple[int, float, float]],
                  ready: MpEvent) -> None:
    """The ceiling: a persistent QoS 1 session on ``ioc/v1/#`` that stores nothing.

    ``drain`` = 0: subscribe and leave (the broker queues for the offline session). Otherwise come back
    and receive ``drain`` messages (auto-acked) as fast as they come; report (count, first, last).
    """
    times: list[float] = []
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = SESSION_S
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: times.append(time.monotonic())
    client.on_subscribe = lambda *a: ready.set()
    if not drain:
        client.on_connect = lambda c, *a: c.subscribe("ioc/v1/#", qos=1)
    client.connect("127.0.0.1", port, clean_start=not drain, properties=props)
    client.loop_start()
    if not drain:
        ready.wait(30)
        time.sleep(0.2)
    else:
        ready.set()
        deadline, last_n, idle_since = time.monotonic() + 900, -1, time.monotonic()
        while len(times) < drain and time.monotonic() < deadline:
            time.sleep(0.05)
            if len(times) != last_n:
                last_n, idle_since = len(times), time.monotonic()
            elif time.monotonic() - idle_since > 30:
                break  # nothing more is coming
    client.disconnect()
    client.loop_stop()
    out.put((len(times), times[0] if times else 0.0, times[-1] if times else 0.0))
    if times and drain:
        k10, k90 = len(times) // 10, len(times) * 9 // 10
        out.put((k90 - k10, times[k10], times[k90]))


def c_subscriber(port: int, client_id: str, drain: int, out_file: Path) -> tuple[int, float]:
    """The same with ``mosquitto_sub`` (C, libmosquitto): the fastest consumer this broker has here.

    ``drain`` = 0: subscribe with a persistent session and leave. Otherwise come back, receive ``drain``
    messages, and return (count, msg/s over the middle 80 %) from the per-message receive times it printed.
    """
    cmd = ["mosquitto_sub", "-p", str(port), "-i", client_id, "-c", "-q", "1", "-V", "mqttv5", "-x", str(SESSION_S),
           "-t", "ioc/v1/#"]
    if not drain:
        subprocess.run([*cmd, "-E"], check=True, timeout=30)
        return 0, 0.0
    with out_file.open("wb") as f:
        subprocess.run([*cmd, "-C", str(drain), "-W", "900", "-F", "%U"], stdout=f, check=False, timeout=960)
    times = [float(line) for line in out_file.read_text().split()]
    if len(times) < 10:
        return len(times), float("nan")
    k10, k90 = len(times) // 10, len(times) * 9 // 10
    return len(times), (k90 - k10) / max(times[k90] - times[k10], 1e-9)


# --- the rig -------------------------------------------------------------------------------------------

@dataclass
class Worker:
    """The ``ioc ingest`` process under test (one stable client id: its session survives restarts)."""

    env: dict[str, str]
    client_id: str
    log: Path
    metrics_port: int
    proc: IngestProcess | None = None

    def start(self) -> None:
        self.proc = IngestProcess(self.env, self.client_id, self.log)
        self.proc.start()
        wait_until(lambda: _scrape_ok(self.metrics_port), 60, what="worker metrics")
        wait_until(lambda: scrape(self.metrics_port).get("ioc_ingest_mqtt_connected") == 1.0, 60, what="mqtt")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None and self.proc.proc is not None
        return self.proc.proc.pid

    def committed(self) -> float:
        return committed(scrape(self.metrics_port))

    def wait_committed(self, target: float, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.committed() >= target:
                return time.monotonic()
            time.sleep(0.05)
        raise TimeoutError(f"only {self.committed():.0f} of {target:.0f} committed")


def _scrape_ok(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


class Rig:
    """Broker + database + worker, started once for all phases."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir

    def __enter__(self) -> Rig:
        self._broker = private_mosquitto()
        self.port = self._broker.__enter__()
        self.dsn = asyncio.run(create_database(BASE_DSN))
        metrics_port = free_port()
        env = ingest_env(self.dsn, self.port, IOC_INGEST__METRICS_PORT=str(metrics_port), IOC_LOG_LEVEL="WARNING",
                         IOC_MQTT__SHARE_GROUP="", IOC_MQTT__SESSION_EXPIRY_S=str(SESSION_S))
        self.worker = Worker(env, f"bench-{uuid.uuid4().hex[:6]}", self.dir / "ingest.log", metrics_port)
        self.worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.stop()
        asyncio.run(drop_database(BASE_DSN, self.dsn))
        self._broker.__exit__(None, None, None)


def start_for(total: int) -> float:
    """A simulated start far enough back that the whole stream has past timestamps."""
    return time.time() - (total / PER_SIM_MINUTE + 10) * 60.0


# --- phases --------------------------------------------------------------------------------------------

def phase_throughput(rig: Rig, total: int, publishers: int) -> dict[str, float]:
    bare_id, c_id = f"bench-bare-{uuid.uuid4().hex[:4]}", f"bench-csub-{uuid.uuid4().hex[:4]}"
    c_subscriber(rig.port, c_id, 0, rig.dir / "mosquitto_sub.txt")
    out: mp.Queue[tuple[int, float, float]] = mp.Queue()
    ready = mp.Event()
    sub = mp.Process(target=_bare_session, args=(rig.port, bare_id, 0, out, ready))
    sub.start()
    out.get(timeout=60)
    sub.join(30)
    rig.worker.stop()  # both sessions offline: the broker queues the stream for each

    t_pub = time.monotonic()
    sent, _, _ = finish(publish(rig.port, total, publishers, rate=0, restamp=False, start=start_for(total)))
    pub_s = time.monotonic() - t_pub

    ready = mp.Event()
    bare = mp.Process(target=_bare_session, args=(rig.port, bare_id, sent, out, ready))
    bare.start()
    count, _, _ = out.get(timeout=960)
    mid_n, t10, t90 = out.get(timeout=10) if count else (0, 0.0, 1.0)
    bare.join(30)
    bare_rate = mid_n / max(t90 - t10, 1e-9)
    c_count, c_rate = c_subscriber(rig.port, c_id, sent, rig.dir / "mosquitto_sub.txt")

    rig.worker.start()  # resumes its session: drains the same queue alone
    cpu0 = cpu_seconds(rig.worker.pid)
    w10 = rig.worker.wait_committed(sent * 0.1, 900)
    w90 = rig.worker.wait_committed(sent * 0.9, 900)
    rig.worker.wait_committed(sent, 900)
    cpu = cpu_seconds(rig.worker.pid) - cpu0
    ingest_rate = sent * 0.8 / (w90 - w10)
    values = asyncio.run(_count_values(rig.dsn))
    print(f"throughput: {sent:,} province messages ({values:,} values) queued at the broker in {pub_s:.0f} s by "
          f"{publishers} publishers, then drained by each consumer alone")
    print(f"  mosquitto_sub   : {c_rate:9,.0f} msg/s  (C client, received {c_count:,}, stores nothing)")
    print(f"  bare paho       : {bare_rate:9,.0f} msg/s  (paho's own loop thread, received {count:,}, stores nothing)")
    print(f"  ingest committed: {ingest_rate:9,.0f} msg/s  = {ingest_rate * values / sent:10,.0f} values/s "
          f"(ack after commit)")
    print(f"  ratio           : {ingest_rate / bare_rate:.2f} of bare paho, "
          f"{ingest_rate / c_rate:.2f} of mosquitto_sub")
    print(f"  worker CPU      : {cpu / sent * 1e6:9.0f} us/msg  (one core would sustain ~{sent / cpu:,.0f} msg/s)")
    return {"bare": bare_rate, "mosquitto_sub": c_rate, "ingest": ingest_rate}


async def _count_values(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM telemetry"))
    finally:
        await conn.close()


async def _poll_commits(dsn: str, probes: list[str], since: float, stop: asyncio.Event,
                        seen: dict[tuple[str, datetime], float], every_s: float = 0.02) -> list[float]:
    """First time each probe device's speed_kmh row is visible; returns each poll's duration (s).

    Each device has its own watermark (its newest row seen): a device's messages come from one publisher,
    in order, so its rows commit in order; the final count says how many were missed anyway.
    """
    conn = await asyncpg.connect(dsn)
    durations: list[float] = []
    start = datetime.fromtimestamp(since, UTC)
    marks = dict.fromkeys(probes, start)
    try:
        while not stop.is_set():
            t0 = time.time()
            rows = await conn.fetch(
                "SELECT t.device_id, t.ts FROM unnest($1::text[], $2::timestamptz[]) AS w(device_id, since) "
                "JOIN telemetry t ON t.device_id = w.device_id AND t.metric = 'speed_kmh' AND t.ts > w.since",
                list(marks), list(marks.values()))
            now = time.time()
            durations.append(now - t0)
            for r in rows:
                seen.setdefault((r["device_id"], r["ts"]), now)
                marks[r["device_id"]] = max(marks[r["device_id"]], r["ts"])
            await asyncio.sleep(max(0.0, every_s - (time.time() - t0)))
    finally:
        await conn.close()
    return durations


def phase_latency(rig: Rig, rate: float, seconds: float, publishers: int) -> None:
    total = int(rate * seconds)
    probes = [d.id for d in build_city(Scenario(scale="province")).devices if d.kind == "traffic"]
    seen: dict[tuple[str, datetime], float] = {}
    since = time.time()
    base = rig.worker.committed()

    async def run() -> list[float]:
        stop = asyncio.Event()
        poller = asyncio.create_task(_poll_commits(rig.dsn, probes, since, stop, seen))
        pub = publish(rig.port, total, publishers, rate=rate, restamp=True, start=start_for(total))
        sent, _, _ = await asyncio.to_thread(finish, pub, seconds + 600)
        await asyncio.to_thread(rig.worker.wait_committed, base + sent, 300)
        await asyncio.sleep(0.5)
        stop.set()
        return await poller

    durations = asyncio.run(run())
    expected = asyncio.run(_probe_rows(rig.dsn, probes, since))
    lat = [(at - ts.timestamp()) * 1000 for (_, ts), at in seen.items()]
    if not lat:
        print("latency: no probe rows seen")
        return
    print(f"latency: {total:,} province messages at {rate:,.0f} msg/s; publish -> committed (visible) per message "
          f"over every traffic sensor's telemetry ({len(lat):,} messages, {len(seen) / max(expected, 1):.1%} of "
          f"them seen by the poller)")
    print(f"  p50 {pct(lat, 0.5):.0f} ms, p90 {pct(lat, 0.9):.0f} ms, p99 {pct(lat, 0.99):.0f} ms, "
          f"max {max(lat):.0f} ms (a poll every 20 ms taking {statistics.median(durations) * 1000:.1f} ms median: "
          f"figures are up to ~{20 + statistics.median(durations) * 1000:.0f} ms late)")


async def _probe_rows(dsn: str, probes: list[str], since: float) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM telemetry WHERE device_id = ANY($1::text[]) AND "
                                       "metric = 'speed_kmh' AND ts > $2", probes, datetime.fromtimestamp(since, UTC)))
    finally:
        await conn.close()


def phase_memory(rig: Rig, total: int, publishers: int) -> None:
    pid = rig.worker.pid
    base = rig.worker.committed()
    samples = [(0.0, rss_mb(pid))]
    t0 = time.monotonic()
    run = publish(rig.port, total, publishers, rate=0, restamp=False, start=start_for(total))
    while rig.worker.committed() < base + total - total % publishers:
        time.sleep(1.0)
        samples.append((time.monotonic() - t0, rss_mb(pid)))
        if time.monotonic() - t0 > 1800:
            raise TimeoutError("memory phase took too long")
    finish(run)
    quarter = [s[1] for s in samples[len(samples) // 4: len(samples) // 2]]
    last = [s[1] for s in samples[-len(samples) // 4:]]
    print(f"memory: {total:,} province messages in {samples[-1][0]:.0f} s; worker RSS start {samples[0][1]:.0f} MB, "
          f"peak {max(s[1] for s in samples):.0f} MB, 2nd-quarter mean {sum(quarter) / len(quarter):.0f} MB, "
          f"last-quarter mean {sum(last) / len(last):.0f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["all", "throughput", "latency", "memory"], default="all")
    parser.add_argument("--messages", type=int, default=200_000, help="throughput phase size")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes (devices split among them)")
    parser.add_argument("--rate", type=float, default=2000.0, help="latency phase rate (msg/s)")
    parser.add_argument("--seconds", type=float, default=30.0, help="latency phase duration")
    parser.add_argument("--memory-messages", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    out = Path("artifacts/bench")
    out.mkdir(parents=True, exist_ok=True)
    print("load: the simulator's province, 3,240 BTS / 1,000 cameras / 500 traffic sensors = 4,740 devices, "
          "their telemetry, status and events (no snapshots), QoS 1")
    with Rig(out) as rig:
        if args.phase in ("all", "throughput"):
            phase_throughput(rig, args.messages, args.publishers)
        if args.phase in ("all", "latency"):
            phase_latency(rig, args.rate, args.seconds, args.publishers)
        if args.phase in ("all", "memory"):
            phase_memory(rig, args.memory_messages, args.publishers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
