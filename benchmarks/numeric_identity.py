"""Bit-identity of the numeric detectors between two checkouts (a speed change must not change any output).

    python benchmarks/numeric_identity.py --base /path/to/worktree-of-the-old-commit [--devices 60] [--days 3.5]
    python benchmarks/numeric_identity.py run --out FILE [--config NAME]   # one side only (used by the above)

Runs one seeded synthetic workload through ``NumericMonitor`` under several configurations (the default and
every optional detector or refire rule switched on), once with the code of ``--base`` (``PYTHONPATH``; run from
a neutral directory so the editable install is not picked first) and once with this checkout, and compares:
every ``SeriesBank.update`` result of every batch (score, raw, kind, expected, spread, fired, baseline,
baseline_spread, record: by bytes, so NaN and -0.0 count), every finding (repr of all fields), every silence
and group finding, the ``dirty``/``urgent`` device sets and the rules' episode memory after every batch, and
the arrays of ``to_state()`` at the end (and once mid-way, where the monitor is restored from its state).

The workload: traffic, BTS and camera devices with the simulator's metric names, kinds and districts (so the
traffic, BTS, frozen and group rules run), readings every 60-300 s over several days with a daily cycle and,
after the first day and a half, spikes, dips, level shifts, variance bursts, drifts, stuck and frozen sensors,
mains loss with a draining battery, speed collapses, a district-wide outage, NaN and huge readings, gaps and
silences; batches in shuffled order, some holding two or three readings of one series.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "novelty": {"novelty_w": 0.5},
    "likelihood1": {"lik_mode": 1, "lik_cap": 10.0},
    "likelihood2": {"lik_mode": 2},
    "likelihood3": {"lik_mode": 3},
    "entropy_hold0": {"re_w": 0.6, "re_hold": 0},
    "entropy_hold1": {"re_w": 0.6, "re_hold": 1},
    "entropy_hold2": {"re_w": 0.6, "re_hold": 2},
    "refires": {
        "young_refire_z": 3.0,
        "calm_refire": 50,
        "tod_refire_gap": 30,
        "calm_burst": False,
        "tod_refire_burst": False,
        "mode_hysteresis": 0.2,
    },
    "art_variants": {
        "art_mode": 3,
        "art_merge": 1,
        "art_grid": True,
        "art_haar_odd": True,
        "art_raw": 0.2,
        "art_z": 1.0,
        "art_re": False,
    },
    "art_mode0": {"art_mode": 0, "art_merge": 2, "art_slots": 6},
    "plain": {"art_w": 0.0, "art_re": False, "tod_bins": 0, "range_tau_s": 0.0, "record_tau_s": 0.0, "tod_novel": 0.0},
}

BTS = ("mains_power", "battery_pct", "availability_pct", "prb_util_pct", "users", "throughput_mbps")
TRAFFIC = ("speed_kmh", "occupancy_pct", "flow_veh_h", "heavy_pct")
CAMERA = ("fps", "bitrate_kbps", "temperature_c")


def workload(devices: int, days: float, seed: int) -> list[list[tuple[str, str, float, float]]]:
    """Batches of readings (device, metric, epoch s, value): see the module docstring."""
    rng = np.random.default_rng(seed)
    t0 = 1_764_900_000.0
    series = []  # (device, metric, interval, base, amplitude, noise, integer)
    kinds = []
    for d in range(devices):
        kind = ("bts", "traffic", "camera")[d % 3]
        dev = f"{kind}-{d:03d}"
        kinds.append((dev, kind, f"district-{d % 4}"))
        metrics = {"bts": BTS, "traffic": TRAFFIC, "camera": CAMERA}[kind]
        interval = {"bts": 300.0, "traffic": 120.0, "camera": 300.0}[kind]
        for m in metrics:
            base = float(rng.uniform(5, 100))
            series.append(
                (
                    dev,
                    m,
                    interval,
                    base,
                    base * float(rng.uniform(0, 0.5)),
                    float(rng.uniform(0.1, 3)),
                    m in ("users", "mains_power"),
                )
            )
    end = t0 + days * 86400.0
    events: list[tuple[float, str, str, float]] = []
    for dev, m, dt, base, amp, noise, integer in series:
        ts = np.arange(t0 + rng.uniform(0, dt), end, dt)
        ts = ts + rng.normal(0, 0.5, len(ts))
        x = base + amp * np.sin(2 * np.pi * (ts % 86400.0) / 86400.0) + rng.normal(0, noise, len(ts))
        if m == "mains_power":
            x = np.ones(len(ts))
        late = np.flatnonzero(ts > t0 + 1.5 * 86400.0)
        if len(late) > 50:
            k = int(rng.choice(late[:-40]))
            what = int(rng.integers(0, 10))
            if what == 0:
                x[k] += 30 * noise + 5 * amp
            elif what == 1:
                x[k:] += 8 * noise + amp
            elif what == 2:
                x[k : k + 30] += rng.normal(0, 15 * noise, 30)
            elif what == 3:
                x[k : k + 25] = x[k]
            elif what == 4:
                x[k:] += np.linspace(0, 20 * noise, len(x) - k)
            elif what == 5:
                x[k] = np.nan
                x[k + 3] = 1e300
            elif what == 6:
                keep = (ts < ts[k]) | (ts > ts[k] + 4 * 3600.0)  # a gap, then back
                ts, x = ts[keep], x[keep]
            elif what == 7:
                x[k : k + 10] -= 30 * noise + 5 * amp
        if integer:
            x = np.round(x)
        events += [(float(t), dev, m, float(v)) for t, v in zip(ts, x, strict=True)]
    # BTS of district-1 lose mains together, batteries draining; traffic of district-2 collapses together
    t_out = t0 + 2.2 * 86400.0
    for i, (t, dev, m, v) in enumerate(events):
        num = int(dev.split("-")[1])
        if dev.startswith("bts") and num % 4 == 1 and t_out <= t < t_out + 3600.0:
            if m == "mains_power":
                events[i] = (t, dev, m, 0.0)
            elif m == "battery_pct":
                events[i] = (t, dev, m, 100.0 - (t - t_out) / 60.0)
        if dev.startswith("traffic") and num % 4 == 2 and t_out <= t < t_out + 1800.0:
            if m == "speed_kmh":
                events[i] = (t, dev, m, 3.0)
            elif m == "occupancy_pct":
                events[i] = (t, dev, m, 95.0)
        if dev == "traffic-001" and t_out <= t < t_out + 1500.0:  # frozen: every metric resent as it was
            events[i] = (t, dev, m, 42.0)
        if dev == "camera-002" and t > t0 + 2.0 * 86400.0:  # silent from then on
            events[i] = (float("nan"), dev, m, v)
    events = [e for e in events if e[0] == e[0]]
    events.sort(key=lambda e: e[0])
    batches: list[list[tuple[str, str, float, float]]] = []
    cur: list[tuple[str, str, float, float]] = []
    edge = t0 + 300.0
    for e in events:
        while e[0] >= edge:
            if cur and rng.random() > 0.1:  # one batch in ten spans two steps: a series twice or more in it
                rng.shuffle(cur)
                batches.append(cur)
                cur = []
            edge += 300.0
        cur.append((e[1], e[2], e[0], e[3]))
    if cur:
        batches.append(cur)
    return [kinds_batch(kinds), *batches]


def kinds_batch(kinds: list[tuple[str, str, str]]) -> list[tuple[str, str, float, float]]:
    """Device declarations travel as a first pseudo-batch (device, kind, NaN, NaN); see ``run``."""
    return [(dev, kind, float("nan"), float("nan")) for dev, kind, _ in kinds] + [
        (dev, grp, float("inf"), float("nan")) for dev, _, grp in kinds
    ]


def _state_arrays(blob: bytes) -> dict[str, bytes]:
    """Every array of a monitor's ``to_state`` (the bank's nested npz unpacked), as dtype, shape and bytes."""
    out: dict[str, bytes] = {}
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        for k in z.files:
            a = z[k]
            if k == "bank":
                with np.load(io.BytesIO(a.tobytes()), allow_pickle=False) as zb:
                    for kb in zb.files:
                        b = zb[kb]
                        out[f"bank.{kb}"] = f"{b.dtype}{b.shape}".encode() + np.ascontiguousarray(b).tobytes()
            else:
                out[k] = f"{a.dtype}{a.shape}".encode() + np.ascontiguousarray(a).tobytes()
    return out


def run(config_name: str, devices: int, days: float, seed: int) -> dict[str, Any]:
    """One configuration over the workload with the code on ``sys.path``; the record to compare."""
    from analytics.numeric.config import DetectorConfig
    from analytics.numeric.monitor import NumericMonitor

    cfg = dataclasses.replace(DetectorConfig(), **CONFIGS[config_name])
    batches = workload(devices, days, seed)
    mon = NumericMonitor(cfg)
    for dev, kind, t, _ in batches[0]:
        if t != t:
            mon.set_device(dev, kind=kind)
        else:
            mon.set_device(dev, group=kind)
    steps: list[bytes] = []
    found: list[str] = []
    mid = len(batches) // 2

    def watch(bank: Any) -> None:
        update = bank.update

        def recorded(rows: np.ndarray, ts: np.ndarray, values: np.ndarray) -> Any:
            res = update(rows, ts, values)
            h = hashlib.sha256()
            for name in (
                "score",
                "raw",
                "kind",
                "expected",
                "spread",
                "fired",
                "baseline",
                "baseline_spread",
                "record",
            ):
                a = getattr(res, name)
                h.update(f"{name}{a.dtype}{a.shape}".encode() + np.ascontiguousarray(a).tobytes())
            steps.append(h.digest())
            return res

        bank.update = recorded

    watch(mon.bank)
    mid_state: dict[str, bytes] = {}
    for i, batch in enumerate(batches[1:], start=1):
        if i == mid:
            blob = mon.to_state()
            mid_state = _state_arrays(blob)
            mon = NumericMonitor.from_state(blob, cfg)
            watch(mon.bank)
        out = mon.ingest(batch)
        now = max(t for _, _, t, _ in batch)
        out += mon.check_silence(now + 60.0)
        found += [f"{i} {f!r}" for f in out]
        r = mon.rules
        found.append(
            f"{i} dirty={sorted(mon.dirty)} urgent={sorted(mon.urgent)} groups={sorted(r.group_active)} "
            f"{r.group_changes} frozen={sorted(r.frozen_active)} {sorted(r.frozen_ended)}"
        )
        if i % 97 == 0:
            mon.dirty.clear()
            mon.urgent.clear()
    import analytics

    return {
        "code": analytics.__file__,
        "steps": steps,
        "found": found,
        "mid": mid_state,
        "end": _state_arrays(mon.to_state()),
        "marks": mon.marks.peak.tobytes(),
        "readings": sum(len(b) for b in batches[1:]),
    }


def compare(name: str, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Differences between two records (empty: bit-identical)."""
    bad = []
    if len(a["steps"]) != len(b["steps"]):
        bad.append(f"{name}: {len(a['steps'])} against {len(b['steps'])} bank updates")
    diff = [i for i, (x, y) in enumerate(zip(a["steps"], b["steps"], strict=False)) if x != y]
    if diff:
        bad.append(f"{name}: {len(diff)} bank updates differ, the first at update {diff[0]}")
    if a["found"] != b["found"]:
        first = next(
            (i for i, (x, y) in enumerate(zip(a["found"], b["found"], strict=False)) if x != y),
            min(len(a["found"]), len(b["found"])),
        )
        bad.append(
            f"{name}: findings/sets differ at line {first}: "
            f"{a['found'][first : first + 1]} / {b['found'][first : first + 1]}"
        )
    for part in ("mid", "end"):
        keys = sorted(set(a[part]) | set(b[part]))
        bad += [f"{name}: state ({part}) array {k} differs" for k in keys if a[part].get(k) != b[part].get(k)]
    if a["marks"] != b["marks"]:
        bad.append(f"{name}: save-tier marks differ")
    return bad


def main(argv: list[str] | None = None) -> int:
    """Run both sides and compare, or (``run``) one side."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="compare", choices=["compare", "run"])
    ap.add_argument("--base", help="checkout of the old code (compare)")
    ap.add_argument("--out", help="record file (run)")
    ap.add_argument("--config", action="append", choices=sorted(CONFIGS), help="default: all")
    ap.add_argument("--devices", type=int, default=60)
    ap.add_argument("--days", type=float, default=3.5)
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args(argv)
    names = args.config or list(CONFIGS)
    common = ["--devices", str(args.devices), "--days", str(args.days), "--seed", str(args.seed)]
    common += [x for n in names for x in ("--config", n)]
    if args.mode == "run":
        records = {n: run(n, args.devices, args.days, args.seed) for n in names}
        Path(args.out).write_bytes(pickle.dumps(records))
        return 0
    if not args.base:
        ap.error("--base is required to compare")
    here = Path(__file__).resolve().parents[1]
    recs = []
    with tempfile.TemporaryDirectory() as tmp:
        for side, root in (("old", Path(args.base).resolve()), ("new", here)):
            out = Path(tmp) / f"{side}.pkl"
            env = {**os.environ, "PYTHONPATH": str(root)}
            # from a neutral directory, the script of this checkout: only PYTHONPATH says whose detectors run
            subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "run", "--out", str(out), *common],
                env=env,
                cwd=tmp,
                check=True,
            )
            recs.append(pickle.loads(out.read_bytes()))
            code = Path(next(iter(recs[-1].values()))["code"]).resolve()
            if not code.is_relative_to(root):
                raise SystemExit(f"{side} side ran the code of {code}, not of {root}")
    bad = []
    for n in names:
        got = compare(n, recs[0][n], recs[1][n])
        found = sum(1 for line in recs[1][n]["found"] if "Finding(" in line)
        print(
            f"{n}: {len(recs[1][n]['steps'])} bank updates, {recs[1][n]['readings']:,} readings, {found} findings: "
            + ("identical" if not got else "DIFFERENT")
        )
        bad += got
    for line in bad:
        print(line)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
