"""Learned numeric state of a province saved per device: bytes per series, incremental save, restore.

A province's series (3,240 BTS x 9 metrics, 500 traffic sensors x 5, 1,000 cameras x 4 = 35,660 series)
learn a day of readings every 5 minutes; then, against the real PostgreSQL (a database of its own, dropped
at the end):

* the old way: the whole monitor as one blob (``NumericMonitor.to_state``), its size and time;
* the first save of every device (``series_state``, one row per device), bytes per series;
* an incremental save with 10 % of the devices dirty (they received a reading): encode + one fenced
  transaction (lease check + one upsert), median of 5;
* the same with every device dirty (every device reported within the save interval);
* a new leader's restore: read every row, rebuild the monitor;
* the write traffic of the periodic saves over ``--minutes`` of simulated time at the simulator's rates
  (BTS and cameras every 60 s, traffic sensors every 30 s), saved every 15 s the old way (every device that
  learned anything) and the two-tier way (analytics/numeric/save_tiers.py: consequential changes within
  15 s, the rest once per ``--full-every`` at each device's slot), once per share of devices hit by an
  injected episode in the window (``--episodes``): state bytes written, WAL bytes, MB/s.

Run: ``python -m benchmarks.state_save [--days 1] [--dirty 0.1 0.27] [--minutes 10] [--episodes 0 0.05]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
import numpy as np

from analytics.numeric import kernel
from analytics.numeric.device_state import encode_devices, gather, pack, restore_devices
from analytics.numeric.monitor import NumericMonitor
from analytics.numeric.save_tiers import SavePlan
from ioc.services import db_upgrade
from ioc.settings import Settings
from storage import cluster as sql
from storage.writes import load_series_states, save_series_states

BASE_DSN = os.environ.get("IOC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
FLEET = (("bts", 3240, ("mains_power", "battery_pct", "temperature_c", "rssi_dbm", "traffic_erl", "cpu_pct",
                        "uplink_mbps", "downlink_mbps", "drop_rate_pct")),
         ("traffic", 500, ("speed_kmh", "occupancy_pct", "volume_vph", "queue_m", "headway_s")),
         ("camera", 1000, ("fps", "bitrate_kbps", "temperature_c", "packet_loss_pct")))
T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def province() -> tuple[NumericMonitor, list[str], np.ndarray, np.ndarray]:
    """A monitor holding every series of a province; device ids; its rows and per-row base level."""
    mon = NumericMonitor()
    devices, rows = [], []
    for kind, count, metrics in FLEET:
        for i in range(count):
            dev = f"{kind}-{i:05d}"
            devices.append(dev)
            mon.set_device(dev, kind, f"district-{i % 12}")
            rows += [mon.register(dev, m) for m in metrics]
    r = np.array(rows, dtype=np.intp)
    return mon, devices, r, np.random.default_rng(1).uniform(10, 100, len(r))


def learn(mon: NumericMonitor, rows: np.ndarray, base: np.ndarray, steps: int, start: int = 0) -> float:
    """``steps`` readings per series, 5 minutes apart, with a daily cycle and noise; returns the last time."""
    rng = np.random.default_rng(start)
    t = T0
    for k in range(start, start + steps):
        t = T0 + 300.0 * k
        day = np.sin(2 * np.pi * (t % 86400) / 86400)
        vals = base * (1 + 0.2 * day) + rng.normal(0, 0.02, len(rows)) * base
        mon.ingest_arrays(rows, np.full(len(rows), t), vals)
    return t


async def incremental(mon: NumericMonitor, devices: list[str], rows: np.ndarray, base: np.ndarray, share: float,
                      days: float, save: Callable[[list[tuple[str, bytes]]], Awaitable[float]]) -> None:
    """Five saves with ``share`` of the devices having learned a reading since the last one; prints the medians."""
    shares = []
    for rnd in range(5):
        pick = np.random.default_rng(10 + rnd).choice(len(devices), int(share * len(devices)), replace=False)
        chosen = set(pick.tolist())
        sel = rows[np.isin(mon.table.dev[rows], [mon.table.device_idx[devices[i]] for i in chosen])]
        mon.dirty.clear()
        mon.ingest_arrays(sel, np.full(len(sel), T0 + 86400 * days + 300 * rnd), base[np.isin(rows, sel)])
        t0 = time.perf_counter()
        dirty = sorted(mon.dirty)
        names = list(mon.table.device_idx)
        copied = gather(mon, [names[d] for d in dirty])  # what the stage does under the detectors' lock
        t1 = time.perf_counter()
        states = pack(copied)  # beside the detectors
        t2 = time.perf_counter()
        wrote = await save(states)
        shares.append((t1 - t0, t2 - t1, wrote, len(states), sum(len(x) for _, x in states), len(sel)))
    copy, enc, wrote = (statistics.median(s[i] for s in shares) for i in range(3))
    print(f"incremental save, {share:.0%} of devices dirty ({shares[0][3]:,} devices, {shares[0][5]:,} "
          f"series, {shares[0][4] / 1e6:.2f} MB): copy under the lock {copy * 1e3:.0f} ms + compress "
          f"{enc * 1e3:.0f} ms + fenced write {wrote * 1e3:.0f} ms (median of 5)")


INTERVALS = {"bts": 60.0, "traffic": 30.0, "camera": 60.0}  # simulators' scenario defaults
PASS_S = 15.0  # IOC_ANALYTICS__SERIES_STATE_EVERY_S


async def traffic(mon: NumericMonitor, devices: list[str], rows: np.ndarray, base: np.ndarray, t_start: float,
                  minutes: float, episodes: float, full_every: float, seed: int,
                  save: Callable[[list[tuple[str, bytes]]], Awaitable[float]], wal: Callable[[], Awaitable[int]]
                  ) -> float:
    """``minutes`` of readings at the simulator's rates from ``t_start``, saved both ways every 15 s; prints
    the bytes each way wrote. ``episodes``: share of devices with one series shifted by 10 spreads from a
    random moment on (a finding, then its hold). Returns the time of the window's end."""
    rng = np.random.default_rng(seed)
    table = mon.table
    every = np.array([INTERVALS[table.kind_of(int(r))] for r in rows])
    offset = rng.uniform(0, 1, len(devices))[table.dev[rows]] * every  # a device's metrics come together
    hit = rng.random(len(devices)) < episodes
    shifted = np.zeros(len(rows), dtype=bool)
    first = np.r_[True, table.dev[rows][1:] != table.dev[rows][:-1]]  # the first series of each device
    shifted[first & hit[table.dev[rows]]] = True
    onset = t_start + rng.uniform(0, minutes * 60.0, len(rows))
    names = list(table.device_idx)
    plan = SavePlan(full_every)
    old_dirty: set[int] = set()
    new_dirty: set[int] = set()
    new_urgent: set[int] = set()
    totals = {"old": [0, 0, 0.0, 0], "new": [0, 0, 0.0, 0]}  # state bytes, WAL bytes, write s, devices
    peaks = {"old": 0, "new": 0}
    urgent_per_pass = []
    findings = 0
    mon.dirty.clear()
    mon.urgent.clear()
    plan.due(names, set(), set(), t_start)  # the plan's first pass: the window starts with nothing owed
    t = t_start
    while t < t_start + minutes * 60.0:
        lo, t = t, t + PASS_S
        # readings of (lo, t]: each series at offset + k * every
        k = np.floor((t - offset) / every)
        due = offset + k * every > lo
        sel, ts = rows[due], (offset + k * every)[due]
        day = np.sin(2 * np.pi * (ts % 86400) / 86400)
        vals = base[due] * (1 + 0.2 * day) + rng.normal(0, 0.02, len(sel)) * base[due]
        vals += np.where(shifted[due] & (ts >= onset[due]), 0.2 * base[due], 0.0)  # 10 spreads
        findings += len(mon.ingest_arrays(sel, ts, vals)) + len(mon.check_silence(t, t_start))
        old_dirty |= mon.dirty
        new_dirty |= mon.dirty
        new_urgent |= mon.urgent
        mon.dirty, mon.urgent = set(), set()
        urgent_per_pass.append(len(new_urgent))
        chosen = plan.due(names, new_dirty, new_urgent, t)
        for way, take in (("old", old_dirty), ("new", chosen)):
            if not take:
                continue
            states = pack(gather(mon, [names[d] for d in sorted(take)]))
            w0 = await wal()
            wrote = await save(states)
            size = sum(len(x) for _, x in states)
            tot = totals[way]
            tot[0] += size
            tot[1] += await wal() - w0
            tot[2] += wrote
            tot[3] += len(states)
            peaks[way] = max(peaks[way], size)
        old_dirty = set()
        new_dirty -= chosen
        new_urgent -= chosen
    span = minutes * 60.0
    print(f"{minutes:g} simulated minutes, {episodes:.0%} of devices with an episode ({int(hit.sum()):,}), "
          f"{findings:,} findings, saved every {PASS_S:g} s; urgent devices per pass: median "
          f"{statistics.median(urgent_per_pass):.0f}, max {max(urgent_per_pass):,}:")
    for way, label in (("old", "old (every changed device every pass)"),
                       ("new", f"two-tier (urgent within {PASS_S:g} s, the rest every {full_every:g} s)")):
        size, walb, wrote, count = totals[way]
        print(f"  {label}: {count:,} device rows, {size / 1e6:.1f} MB of state = {size / span / 1e6:.2f} MB/s, "
              f"WAL {walb / 1e6:.1f} MB = {walb / span / 1e6:.2f} MB/s, largest pass {peaks[way] / 1e6:.1f} MB, "
              f"write time {wrote:.1f} s")
    return t


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, default=1.0, help="days of 5-minute readings learned first")
    ap.add_argument("--dirty", type=float, nargs="+", default=[0.1, 0.27],
                    help="shares of devices dirty in the incremental saves (0.27: the simulator's rates, 15 s)")
    ap.add_argument("--minutes", type=float, default=10.0, help="simulated minutes of periodic saves, per --episodes")
    ap.add_argument("--episodes", type=float, nargs="*", default=[0.0, 0.05],
                    help="shares of devices with an injected episode in each simulated window")
    ap.add_argument("--full-every", type=float, default=300.0, help="IOC_ANALYTICS__SERIES_STATE_FULL_EVERY_S")
    ap.add_argument("--only-traffic", action="store_true", help="skip the one-off measurements before it")
    args = ap.parse_args()

    t = time.perf_counter()
    mon, devices, rows, base = province()
    learn(mon, rows, base, int(args.days * 288))
    n_series = len(mon.table)
    print(f"province: {len(devices):,} devices, {n_series:,} series, learned {args.days:g} day(s) "
          f"in {time.perf_counter() - t:.1f} s")

    if not args.only_traffic:
        t = time.perf_counter()
        blob = mon.to_state()
        print(f"old: whole monitor as one blob: {len(blob) / 1e6:.1f} MB ({len(blob) / n_series:.0f} B/series), "
              f"encoded in {time.perf_counter() - t:.2f} s")

    name = f"h1_state_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(BASE_DSN)
    await admin.execute(f"CREATE DATABASE {name}")
    dsn = BASE_DSN.rsplit("/", 1)[0] + f"/{name}"
    try:
        await db_upgrade(Settings(database_url=dsn))
        conn = await asyncpg.connect(dsn)
        epoch = await sql.try_acquire(conn, "brain", "bench", 60.0)
        assert epoch is not None

        async def save(states: list[tuple[str, bytes]]) -> float:
            t0 = time.perf_counter()
            async with conn.transaction():
                await sql.check_epoch(conn, "brain", "bench", epoch)
                await save_series_states(conn, "numeric", states)
            return time.perf_counter() - t0

        async def wal() -> int:  # the cluster's WAL position: other databases' writes count too
            return int(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))

        t = time.perf_counter()
        everything = encode_devices(mon, devices)
        enc_all = time.perf_counter() - t
        wrote_all = await save(everything)
        size = sum(len(x) for _, x in everything)
        table = await conn.fetchval("SELECT pg_total_relation_size('series_state')")
        print(f"new: every device saved: {size / 1e6:.1f} MB of state ({size / n_series:.0f} B/series; table "
              f"{table / 1e6:.1f} MB), encode {enc_all:.2f} s + write {wrote_all:.2f} s")

        if not args.only_traffic:
            for share in args.dirty:
                await incremental(mon, devices, rows, base, share, args.days, save)
            t0 = time.perf_counter()
            wrote_all = await save(encode_devices(mon, devices))
            print(f"incremental save, every device dirty: {time.perf_counter() - t0:.2f} s "
                  f"(write {wrote_all:.2f} s)")
        t_sim = float(mon.bank.F[:n_series, kernel.T_LAST].max()) + 1.0  # on from the last reading learned
        for i, share in enumerate(args.episodes):
            t_sim = await traffic(mon, devices, rows, base, t_sim, args.minutes, share, args.full_every, 100 + i,
                                  save, wal)

        t0 = time.perf_counter()
        saved = await load_series_states(conn, "numeric")
        read = time.perf_counter() - t0
        fresh = NumericMonitor()
        restored = restore_devices(fresh, saved)
        total = time.perf_counter() - t0
        assert restored == len(devices) and len(fresh.table) == n_series
        print(f"restore by a new leader: {restored:,} devices, {len(fresh.table):,} series in {total:.2f} s "
              f"(read {read:.2f} s, rebuild {total - read:.2f} s)")
        await conn.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    asyncio.run(main())
