"""The simulator: plans incidents, writes ground truth, runs fleet shards (threads or processes) to the broker.

Usage from code (the demo runs it in-process or as ``ioc simulate`` in a subprocess)::

    city = build_city(Scenario(scale="small", seed=7))
    stats = Simulator(city, SimOptions(mqtt_url="mqtt://127.0.0.1:1883", duration_s=60)).run(stop_event)
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ingest.tls import TlsOptions
from simulators.city import City
from simulators.clock import SimClock, iso_utc
from simulators.fleet import Fleet, FleetOptions
from simulators.incidents import Incident, plan_incidents, write_ground_truth
from simulators.transport import Broker, PerDeviceMqtt, PooledMqtt, Transport, TransportError

logger = logging.getLogger(__name__)

# Slots of the shared per-shard counter array.
_FIELDS = ("sent", "acked", "values", "bytes", "snapshots", "skipped", "sim_now", "lag_s", "done", "failed")
#: When the generator is this many real seconds behind, snapshots are shed first (telemetry is kept).
SHED_LAG_S = 5.0


@dataclass(slots=True)
class SimOptions:
    """How and where to run (the scenario inside the city says what)."""

    mqtt_url: str = "mqtt://127.0.0.1:1883"
    connections: Literal["pooled", "per-device"] = "pooled"
    pool_size: int = 2  # connections per process in pooled mode
    processes: int = 1
    speed: float = 1.0  # simulated seconds per real second
    start: float | None = None  # simulated start (epoch s); default: now, or now - duration*speed if accelerated
    duration_s: float | None = 60.0  # real seconds; None runs until the stop event
    ts_format: Literal["ms", "rfc3339"] = "ms"
    ground_truth: str | None = None  # JSON-lines file for the incident plan
    offline_on_exit: bool = True
    retain_expiry_s: int | None = None  # MQTT 5 expiry on retained statuses and wills
    report_every_s: float = 5.0
    snapshots: bool = True
    first_report_within_s: float | None = None  # FleetOptions.first_report_within_s
    max_outstanding: int = 2000
    tls: TlsOptions | None = None  # CA / client certificate files for an mqtts:// URL


@dataclass(slots=True)
class RunStats:
    """What a run achieved. Rates are per real second over the publishing time."""

    sent: int = 0
    acked: int = 0
    values: int = 0
    bytes: int = 0
    snapshots: int = 0
    snapshots_skipped: int = 0
    elapsed_s: float = 0.0
    sim_start: str = ""
    sim_end: str = ""
    failed_shards: int = 0
    incidents: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def messages_per_s(self) -> float:
        """Broker-acknowledged messages per second."""
        return self.acked / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def values_per_s(self) -> float:
        """Metric values per second."""
        return self.values / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return (f"{self.acked} messages acked ({self.sent} sent), {self.values} values, "
                f"{self.snapshots} snapshots ({self.snapshots_skipped} shed), {self.bytes / 1e6:.1f} MB "
                f"in {self.elapsed_s:.1f} s: {self.messages_per_s:,.0f} msg/s, {self.values_per_s:,.0f} values/s; "
                f"simulated {self.sim_start} .. {self.sim_end}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, rates included."""
        d = asdict(self)
        d.update(messages_per_s=round(self.messages_per_s, 1), values_per_s=round(self.values_per_s, 1))
        return d


def resolve_start(options: SimOptions, now: float | None = None) -> float:
    """The simulated start time: explicit, or chosen so that an accelerated run ends at about 'now'."""
    now = time.time() if now is None else now
    if options.start is not None:
        if options.start > now + 60:
            raise ValueError("the simulated start is in the future: the ingest refuses ts > 5 min ahead")
        return options.start
    if options.speed == 1.0:
        return now
    if options.duration_s is None:
        raise ValueError("an accelerated run without a duration needs an explicit start")
    return now - options.duration_s * options.speed


class Simulator:
    """Runs a city's devices against a broker.

    Args:
        city: from ``build_city``; its scenario gives intervals and incidents.
        options: clock, transport, processes, outputs.
    """

    def __init__(self, city: City, options: SimOptions | None = None) -> None:
        self.city = city
        self.options = options or SimOptions()
        self.t0 = resolve_start(self.options)
        span = (self.options.duration_s or 3600.0) * self.options.speed
        self.t1 = self.t0 + span
        self.incidents: list[Incident] = plan_incidents(city, self.t0, self.t1)

    def ground_truth(self) -> list[dict[str, Any]]:
        """The incident plan as ground-truth records (what ``ground_truth`` file lines contain)."""
        return [inc.ground_truth() for inc in self.incidents]

    def run(self, stop_event: threading.Event | None = None) -> RunStats:
        """Publish until the duration elapses or ``stop_event`` is set; returns what was achieved."""
        opts = self.options
        if opts.ground_truth:
            path = write_ground_truth(opts.ground_truth, self.incidents)
            logger.info("ground truth: %d incidents -> %s", len(self.incidents), path)
        stop_event = stop_event or threading.Event()
        n = max(1, opts.processes)
        logger.info("simulating %d devices (%s) in %d process(es), %s connections, speed %gx from %s",
                    len(self.city.devices), _kinds(self.city), n, opts.connections, opts.speed, iso_utc(self.t0))
        stats = self._run_local(stop_event) if n == 1 else self._run_processes(n, stop_event)
        stats.incidents = len(self.incidents)
        stats.sim_start = iso_utc(self.t0)
        logger.info("done: %s", stats.summary())
        return stats

    def _run_local(self, stop_event: threading.Event) -> RunStats:
        counters = [0.0] * len(_FIELDS)
        ready = threading.Event()
        wall0 = [0.0]
        box: dict[str, Any] = {}

        def on_ready() -> float:
            wall0[0] = time.time()
            ready.set()
            return wall0[0]

        def target() -> None:
            try:
                _run_shard(self.city, self.options, self.incidents, 0, 1, self.t0, stop_event, counters, on_ready)
            except BaseException as err:  # reported to the caller below
                box["error"] = err
                ready.set()

        worker = threading.Thread(target=target, name="sim-shard-0", daemon=True)
        worker.start()
        ready.wait()
        self._report_loop(lambda: [counters], lambda: not worker.is_alive(), wall0[0] or time.time())
        worker.join()
        if "error" in box:
            raise box["error"]
        return self._collect([counters], time.time() - (wall0[0] or time.time()))

    def _run_processes(self, n: int, stop_event: threading.Event) -> RunStats:
        ctx = mp.get_context("spawn")  # no forked paho threads or OpenCV pools
        shared = ctx.Array("d", n * len(_FIELDS))
        barrier = ctx.Barrier(n + 1)
        go = ctx.Event()
        wall0 = ctx.Value("d", 0.0)
        stop = ctx.Event()
        procs = [ctx.Process(target=_shard_main, name=f"sim-shard-{i}",
                             args=(self.city, self.options, self.incidents, i, n, self.t0, stop, shared, barrier,
                                   go, wall0)) for i in range(n)]
        for p in procs:
            p.start()
        try:
            barrier.wait(timeout=60)
        except threading.BrokenBarrierError:
            stop.set()
            go.set()
            for p in procs:
                p.join(5)
            raise TransportError("a simulator process could not connect to the broker") from None
        wall0.value = time.time()
        go.set()
        width = len(_FIELDS)

        def rows() -> list[list[float]]:
            snap = shared[:]
            return [snap[i * width:(i + 1) * width] for i in range(n)]

        def relay() -> None:  # the caller's threading.Event drives the processes' shared event
            stop_event.wait()
            stop.set()

        bridge = threading.Thread(target=relay, daemon=True)
        bridge.start()
        self._report_loop(rows, lambda: all(not p.is_alive() for p in procs), wall0.value)
        stop.set()
        for p in procs:
            p.join(30)
        return self._collect(rows(), time.time() - wall0.value)

    def _report_loop(self, rows: Any, finished: Any, wall0: float) -> None:
        last_t, last_acked = time.time(), 0.0
        every = max(0.5, self.options.report_every_s)
        while not finished():
            time.sleep(min(0.2, every))
            now = time.time()
            if now - last_t < every:
                continue
            data = rows()
            acked = sum(r[1] for r in data)
            values = sum(r[2] for r in data)
            sim_now = min((r[6] for r in data if r[6]), default=0.0)
            lag = max((r[7] for r in data), default=0.0)
            logger.info("sim %s | %.0f msg/s (%.0f total), %.0f values/s avg | lag %.1f s | snapshots %d, shed %d",
                        iso_utc(sim_now)[:19] if sim_now else "-", (acked - last_acked) / (now - last_t), acked,
                        values / max(1e-9, now - wall0), lag, sum(r[4] for r in data), sum(r[5] for r in data))
            last_t, last_acked = now, acked

    def _collect(self, data: list[list[float]], elapsed: float) -> RunStats:
        tot = [sum(r[i] for r in data) for i in range(len(_FIELDS))]
        sim_end = max((r[6] for r in data), default=self.t0)
        return RunStats(sent=int(tot[0]), acked=int(tot[1]), values=int(tot[2]), bytes=int(tot[3]),
                        snapshots=int(tot[4]), snapshots_skipped=int(tot[5]), elapsed_s=round(elapsed, 3),
                        sim_end=iso_utc(sim_end or self.t0), failed_shards=int(tot[9]))


def _kinds(city: City) -> str:
    return ", ".join(f"{len(city.by_kind(k))} {k}" for k in ("bts", "camera", "traffic"))


def make_transport(options: SimOptions, shard: int = 0) -> Transport:
    """The transport the options ask for."""
    broker = Broker.from_url(options.mqtt_url, options.tls)
    if options.connections == "per-device":
        return PerDeviceMqtt(broker, retain_expiry_s=options.retain_expiry_s)
    return PooledMqtt(broker, options.pool_size, options.max_outstanding, options.retain_expiry_s,
                      name=f"sim-{shard}")


def _shard_main(city: City, options: SimOptions, incidents: list[Incident], shard: int, n: int, t0: float,
                stop: Any, shared: Any, barrier: Any, go: Any, wall0: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s shard{shard} %(name)s: %(message)s")
    width = len(_FIELDS)
    row = [0.0] * width

    def ready() -> float:
        barrier.wait(timeout=60)
        go.wait()
        return float(wall0.value)

    def publish_row() -> None:
        shared[shard * width:(shard + 1) * width] = row

    try:
        _run_shard(city, options, incidents, shard, n, t0, stop, row, ready, publish_row)
    except TransportError as err:
        logger.error("%s", err)
        barrier.abort()
        row[9] = 1
    publish_row()


def _run_shard(city: City, options: SimOptions, incidents: list[Incident], shard: int, n: int, t0: float,
               stop: Any, row: list[float], ready_cb: Any, flush_row: Any = None) -> None:
    """Run one shard (devices ``i % n == shard``) until the duration elapses or ``stop`` is set."""
    devices = [d for i, d in enumerate(city.devices) if i % n == shard]
    transport = make_transport(options, shard)
    fleet = Fleet(city, devices, incidents, FleetOptions(wills=transport.has_wills, ts_format=options.ts_format,
                                                         offline_on_exit=options.offline_on_exit,
                                                         snapshots=options.snapshots,
                                                         first_report_within_s=options.first_report_within_s))
    transport.connect([d.id for d in devices], {d.id: d.kind for d in devices})
    wall_start = ready_cb()
    if options.speed == 1.0 and options.start is None:
        # Real time: the devices' clocks are the wall clock. (Anchoring at the go instant instead would put
        # every timestamp behind by the time processes took to start and connect.)
        wall_start = t0
    clock = SimClock(t0, options.speed, wall_start)  # all shards share the parent's start instant
    c = transport.counters

    def sync() -> None:
        row[:8] = [c.sent, c.acked, c.values, c.bytes, c.snapshots, fleet.snapshots_skipped, clock.now(),
                   max(0.0, (clock.now() - fleet.next_due()) / options.speed)]
        if flush_row:
            flush_row()

    def over() -> bool:
        return stop.is_set() or (options.duration_s is not None and clock.elapsed() >= options.duration_s)

    def shed(due: float) -> bool:
        # Snapshots more than SHED_LAG_S real seconds late are dropped; readings are always sent.
        return (clock.now() - due) / options.speed > SHED_LAG_S

    try:
        for out in fleet.start(t0):
            transport.send(out, stop)
        last_sync = 0.0
        while not over():
            for k, out in enumerate(fleet.advance(clock.now(), shed)):
                transport.send(out, stop)
                if k % 256 == 255:
                    if time.monotonic() - last_sync > 0.5:
                        sync()
                        last_sync = time.monotonic()
                    if over():
                        break
            sync()
            last_sync = time.monotonic()
            stop.wait(min(0.25, clock.real_seconds_until(fleet.next_due())))
        for out in fleet.stop(clock.now()):
            transport.send(out, stop)
        if not transport.flush(10.0):
            logger.warning("shard %d: some messages were not acknowledged before closing", shard)
    finally:
        sync()
        row[8] = 1
        transport.close()
        sync()
