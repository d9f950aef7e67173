"""Speed and memory of the numeric detectors on a province's own telemetry.

    python benchmarks/numeric_speed.py [--scale province] [--warm-hours 3] [--minutes 10] [--repeat 3]
                                       [--flush-seconds 1,5,60]  # also time bigger flushes (a backlog)
                                       [--set art_w=1]   # a non-default DetectorConfig (experiments)

The city simulator's province (3,240 BTS cells x 9 metrics every 60 s, 500 traffic sensors x 5 every
30 s, 1,000 cameras x 4 every 60 s; its metric names, device kinds and districts) is parsed by the
ingest parser and fed to the monitor exactly as the analytics stage does: devices declared with their
kind and district (so the traffic, BTS and district-group rules run), then one ``NumericMonitor.ingest``
per second of readings. ``--warm-hours`` of normal life are fed first, untimed, so that every series is
past its learning period; then ``--minutes`` are timed. Prints readings/s through the whole monitor
(detector bank + domain and group rules + findings) and through the detector bank alone, and bytes of
state per series. Run it under ``nice`` on a shared machine and read the figures as "under load".

Why ``--flush-seconds``: the stage sleeps a second, then takes everything that came in meanwhile. At a
province's real rate a one-second flush holds a few hundred readings, and numpy's fixed cost per call
dominates; the stage is then idle most of the second and that rate is not its capacity. When readings come
in faster than it keeps up with (a backlog after a stall, a bigger province), its flushes grow by themselves:
a flush of K seconds of device time is what it takes in then. The first figure stays the one-second flush.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from datetime import UTC, datetime

import numpy as np

from analytics.numeric.config import DetectorConfig
from analytics.numeric.monitor import NumericMonitor
from ingest.parse import parse_message
from ingest.records import Reading
from simulators.city import build_city
from simulators.fleet import Fleet, FleetOptions, Message
from simulators.scenario import Scenario

Flush = list[tuple[str, str, datetime, float]]
T0 = 1_764_900_000.0  # 2025-12-05 02:00 UTC: a morning in Hai Phong


def minutes_of_readings(fleet: Fleet, start: float, minutes: int) -> list[list[Flush]]:
    """Per simulated minute, the readings the ingest parser makes of the fleet's messages, cut into
    one flush per second of device time (the analytics stage flushes every second)."""
    out: list[list[Flush]] = []
    for k in range(1, minutes + 1):
        now = start + 60.0 * k
        by_second: dict[int, Flush] = {}
        for msg in fleet.advance(now - 1e-6):
            if not isinstance(msg, Message):
                continue
            parsed = parse_message(msg.topic, msg.payload, datetime.fromtimestamp(now, UTC), msg.retain)
            for rec in parsed.records:
                if isinstance(rec, Reading):
                    flush = by_second.setdefault(int(rec.ts.timestamp()), [])
                    flush.extend((rec.device_id, metric, rec.ts, value) for metric, value in rec.metrics.items())
        out.append([by_second[s] for s in sorted(by_second)])
    return out


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", default="province", choices=["small", "district", "province"])
    ap.add_argument("--warm-hours", type=float, default=3.0, help="normal life fed before timing (untimed)")
    ap.add_argument("--minutes", type=int, default=10, help="simulated minutes timed")
    ap.add_argument("--repeat", type=int, default=1, help="time this many copies of the monitor, print the best")
    ap.add_argument("--flush-seconds", default="1",
                    help="device seconds per flush, comma-separated (the first is also used for the bank alone)")
    ap.add_argument("--set", action="append", default=[], help="DetectorConfig override key=value (experiments)")
    args = ap.parse_args(argv)
    cfg = dataclasses.replace(DetectorConfig(), **{k: type(getattr(DetectorConfig(), k))(v) for k, v in
                                                   (item.split("=", 1) for item in args.set)})

    city = build_city(Scenario(scale=args.scale))
    kinds = Counter(d.kind for d in city.devices)
    fleet = Fleet(city, city.devices, [], FleetOptions(offline_on_exit=False, snapshots=False))
    fleet.start(T0)
    monitor = NumericMonitor(cfg)
    for dev in city.devices:  # what the analytics stage declares from the registry: kind and district
        monitor.set_device(dev.id, dev.kind, dev.district)

    t_gen = time.perf_counter()
    warm_minutes = int(args.warm_hours * 60)
    fed = 0
    for k in range(0, warm_minutes, 30):  # generate and feed in half hours: bounded memory
        for minute in minutes_of_readings(fleet, T0 + 60.0 * k, min(30, warm_minutes - k)):
            for flush in minute:
                monitor.ingest(flush)
                fed += len(flush)
    warm_s = time.perf_counter() - t_gen
    timed = minutes_of_readings(fleet, T0 + 60.0 * warm_minutes, args.minutes)
    seconds = [f for minute in timed for f in minute]
    n = sum(len(f) for f in seconds)
    state = monitor.to_state()

    by_size: dict[int, list[float]] = {}
    per_flush: dict[int, float] = {}
    findings = Counter[str]()
    for k in (int(v) for v in args.flush_seconds.split(",")):
        grouped = [[r for f in seconds[i:i + k] for r in f] for i in range(0, len(seconds), k)]
        per_flush[k] = n / max(len(grouped), 1)
        for i in range(args.repeat):  # each repeat on a fresh copy of the warmed monitor: same work each time
            mon = NumericMonitor.from_state(state, cfg)
            t0 = time.perf_counter()
            for flush in grouped:
                for f in mon.ingest(flush):
                    findings[f.type] += 1 if i == 0 and not by_size else 0
            by_size.setdefault(k, []).append(n / (time.perf_counter() - t0))
    first = int(args.flush_seconds.split(",")[0])
    flushes = [[r for f in seconds[i:i + first] for r in f] for i in range(0, len(seconds), first)]
    rates = by_size[first]

    # The detector bank alone over the same readings (rows resolved beforehand, as arrays).
    mon = NumericMonitor.from_state(state, cfg)
    arrays = []
    for flush in flushes:
        rows = np.array([mon.register(d, m) for d, m, _, _ in flush], dtype=np.int64)
        ts = np.array([t.timestamp() for _, _, t, _ in flush])
        vals = np.array([v for _, _, _, v in flush])
        arrays.append((rows, ts, vals))
    t0 = time.perf_counter()
    for rows, ts, vals in arrays:
        mon.bank.update(rows, ts, vals)
    bank_rate = n / (time.perf_counter() - t0)

    series = mon.bank.size
    print(f"fleet: {args.scale}: {', '.join(f'{kinds[k]:,} {k}' for k in sorted(kinds))}; {series:,} series "
          f"(simulator metric names, kinds and districts)")
    print(f"warm-up: {args.warm_hours:g} h of normal life, {fed:,} readings fed untimed ({warm_s:.0f} s)")
    print(f"timed: {args.minutes} simulated minutes, {n:,} readings in {len(flushes):,} flushes of {first} s "
          f"(~{n / max(len(flushes), 1):,.0f} readings per flush)")
    best = max(rates)
    print(f"monitor (bank + traffic/BTS/group rules + findings) readings/s: {best:,.0f}"
          + (f" (best of {', '.join(f'{r:,.0f}' for r in rates)})" if len(rates) > 1 else "")
          + f"  = {best / (n / (args.minutes * 60)):,.1f}x the province's real-time rate")
    for k, rs in list(by_size.items())[1:]:
        each = f" (best of {', '.join(f'{r:,.0f}' for r in rs)})" if len(rs) > 1 else ""
        print(f"monitor with flushes of {k} s of readings (~{per_flush[k]:,.0f} each): {max(rs):,.0f} readings/s{each}")
    print(f"detector bank alone readings/s: {bank_rate:,.0f}")
    print(f"findings during the timed minutes: {sum(findings.values())} "
          f"({', '.join(f'{k} {v}' for k, v in findings.most_common()) or 'none: normal life'})")
    print(f"state: {mon.bank.nbytes_per_series():,.0f} bytes/series in the bank, {len(state) / max(series, 1):,.0f} "
          f"bytes/series serialised")


if __name__ == "__main__":
    main()
