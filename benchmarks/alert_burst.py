"""A burst of new alerts in one alert-engine step: step time against the burst's size.

    flock -x /tmp/ioc-bench.lock nice -n 0 .venv/bin/python -m benchmarks.alert_burst              # 1,000 4,000 12,000
    flock -x /tmp/ioc-bench.lock nice -n 0 .venv/bin/python -m benchmarks.alert_burst --n 12000 --profile

N distinct devices, spread over ``--districts`` districts (each a box of about 11 x 11 km), all raise a new
alert at the same second (a province-wide power cut, a broker-wide reconnect): the engine's ``observe`` and
``tick`` under a checkpoint, as ``AlertStage._apply`` runs them each tick. The mix of what fires is that of a
storm's first minute: BTS on battery (one power incident per district), cameras reporting a fault and BTS with a
degraded KPI (an incident each), cameras and traffic sensors gone silent (one per kind and district), traffic
jams (near ones spread into one incident) and statistical oddities (stand-alone context). Before the burst the
engine already holds ``--held`` live alerts of the same mix (an ongoing day), so each new alert meets them.
Printed: step time per N, alerts and incidents, and the growth factor against the previous N.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from ioc.alerts.checkpoint import checkpoint
from ioc.alerts.engine import AlertEngine
from ioc.alerts.escalation import Shift
from ioc.alerts.model import Changes, Severity, Signal

T0 = datetime(2026, 9, 14, 2, 0, tzinfo=UTC)
#: rule, category share of the burst, device kind
MIX = (("mains_power_lost", 0.35, "bts"), ("camera_fault", 0.2, "camera"), ("kpi_degraded", 0.1, "bts"),
       ("device_silent", 0.15, "camera"), ("speed_collapse", 0.12, "traffic"), ("anomaly", 0.08, "traffic"))


def signals(n: int, districts: int, seed: int, prefix: str, ts: datetime) -> list[Signal]:
    """``n`` active signals of ``n`` distinct devices, in the storm's mix, at ``ts``."""
    rng = random.Random(seed)
    out: list[Signal] = []
    for i in range(n):
        r, acc = rng.random(), 0.0
        rule, kind = MIX[-1][0], MIX[-1][2]
        for name, share, k in MIX:
            acc += share
            if r < acc:
                rule, kind = name, k
                break
        d = rng.randrange(districts)
        lat = 20.0 + (d // 6) * 0.2 + rng.uniform(0, 0.1)
        lon = 105.5 + (d % 6) * 0.2 + rng.uniform(0, 0.1)
        dev = f"{prefix}{kind}-{i:05d}"
        sev = Severity.CRITICAL if rule == "mains_power_lost" and rng.random() < 0.1 else Severity.MAJOR
        out.append(Signal(rule, f"{rule}:{dev}", True, ts, dev, kind, f"D{d:02d}", sev, f"{rule} at {dev}", "burst",
                          {"burst": True}, lat, lon))
    return out


def engine() -> AlertEngine:
    eng = AlertEngine()
    eng.shifts = [Shift(lvl, f"o{lvl}", lvl, T0 - timedelta(hours=1), T0 + timedelta(days=1)) for lvl in (1, 2)]
    return eng


def step(eng: AlertEngine, sigs: list[Signal], now: datetime) -> Changes:
    """What ``AlertStage._apply`` does with the engine: observe and tick, all or nothing."""
    saved = checkpoint(eng)
    try:
        ch = eng.observe(sigs, now)
        ch.merge(eng.tick(now))
    except BaseException:
        saved.restore()
        raise
    saved.close()
    return ch


def run(n: int, args: argparse.Namespace) -> dict[str, Any]:
    eng = engine()
    if args.held:
        step(eng, signals(args.held, args.districts, args.seed + 1, "held-", T0 - timedelta(minutes=30)),
             T0 - timedelta(minutes=30))
    held_incidents = len(eng.incidents)
    burst = signals(n, args.districts, args.seed, "", T0)
    prof = cProfile.Profile() if args.profile else None
    t = time.perf_counter()
    if prof:
        prof.enable()
    ch = step(eng, burst, T0)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(18)
    opened = sum(1 for e in ch.audit if e.action == "incident_opened")
    return {"n": n, "s": wall, "alerts": sum(1 for e in ch.audit if e.action == "alert_opened"),
            "incidents": opened, "held_incidents": held_incidents, "pages": len(ch.pages)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 4000, 12000], help="burst sizes")
    ap.add_argument("--districts", type=int, default=12)
    ap.add_argument("--held", type=int, default=0, help="live alerts held before the burst")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="cProfile the burst step (cumulative, top 18)")
    args = ap.parse_args()
    prev: dict[str, Any] | None = None
    print(f"{'N':>7} {'step s':>9} {'us/alert':>9} {'growth':>7} {'alerts':>7} {'incidents':>9} {'pages':>6}")
    for n in args.n:
        r = run(n, args)
        growth = f"x{r['s'] / prev['s']:.1f}" if prev else "-"
        print(f"{n:>7} {r['s']:>9.3f} {r['s'] / n * 1e6:>9.1f} {growth:>7} {r['alerts']:>7} {r['incidents']:>9} "
              f"{r['pages']:>6}" + (f"  (held {args.held} alerts, {r['held_incidents']} incidents)" if args.held
                                    else ""))
        prev = r


if __name__ == "__main__":
    main()
