"""A province-wide outage through the alert stage: step time, alerts -> incidents, pages, notifications.

    flock /tmp/ioc-bench.lock nice -n 0 .venv/bin/python -m benchmarks.outage_storm             # spread over 5 min
    flock /tmp/ioc-bench.lock nice -n 0 .venv/bin/python -m benchmarks.outage_storm --spread-s 0  # all in one tick

The simulator's province (3,240 BTS cells, 1,000 cameras, 500 traffic sensors, bundled city's districts) goes
through a typhoon in simulated time, one alert-stage step per simulated second (``AlertStage.step``, the same
call the brain makes every ``tick_s`` on its event loop, then the feed push and the pages' rendering):
  * mains power lost at ``--power-share`` of the BTS (device alarm ``mains_power_lost``) within ``--spread-s``;
  * a fibre cut: every camera reports offline (status ``offline``) within the same span, starting 60 s in;
  * 10 minutes later half of the BTS on battery raise ``battery_low``, 5 minutes after that they go offline;
  * 25 minutes in, mains power is back everywhere (``mains_power_restored``), cameras and BTS report online.
Printed: wall time per step (p50, p99, max), alerts fired, incidents opened, pages and notifications queued
(one officer per escalation level, email + one webhook), and how long after the first alarm the first
incident was opened (simulated and wall time). Only the database and MQTT are left out.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest.records import DeviceEvent, ParsedMessage, StatusUpdate
from ioc.alerts.config import AlertsConfig
from ioc.alerts.escalation import Shift
from ioc.alerts.notify.config import NotifyConfig
from ioc.alerts.stage import AlertStage
from ioc.geo import City as GeoCity
from simulators.city import City, build_city
from simulators.scenario import Scenario

T0 = datetime(2026, 9, 14, 2, 0, tzinfo=UTC)


class _Dev:
    __slots__ = ("district", "kind", "lat", "lon")

    def __init__(self, kind: str, district: str, lat: float, lon: float) -> None:
        self.kind, self.district, self.lat, self.lon = kind, district, lat, lon


class _Table:
    def __init__(self) -> None:
        self.devices: dict[str, _Dev] = {}


class _Hub:
    """What the stage needs of the live hub: the device registry and the feed (counted, not sent)."""

    def __init__(self) -> None:
        self.table = _Table()
        self.frames = 0
        self.snapshot_extra: Any = None
        self.snapshot_incidents, self.incident_members = 200, 50  # what the feed's incidents carry (IOC_LIVE__*)

    def emit_alert(self, *args: Any, **kwargs: Any) -> None:
        self.frames += 1


def _timeline(args: argparse.Namespace) -> tuple[dict[int, list[Any]], City]:
    """Simulated second -> records arriving then."""
    city = build_city(Scenario(scale="province", seed=args.seed))
    rng = random.Random(args.seed)
    bts, cams = city.by_kind("bts"), city.by_kind("camera")
    at: dict[int, list[Any]] = {}

    def put(s: float, rec: Any) -> None:
        at.setdefault(int(s), []).append(rec)

    def ts(s: float) -> datetime:
        return T0 + timedelta(seconds=s)

    spread = max(args.spread_s, 1e-9)
    powered_off = [d for d in bts if rng.random() < args.power_share]
    for d in powered_off:
        s = rng.uniform(0, spread) if args.spread_s else 0.0
        put(s, DeviceEvent(d.id, "bts", ts(s), "mains_power_lost", "major", {}))
    for d in cams:
        s = (60 + rng.uniform(0, spread)) if args.spread_s else 0.0
        put(s, StatusUpdate(d.id, "camera", ts(s), "offline", "link down"))
    low = powered_off[: len(powered_off) // 2]
    for d in low:
        s = 600 + (rng.uniform(0, spread) if args.spread_s else 0.0)
        put(s, DeviceEvent(d.id, "bts", ts(s), "battery_low", "critical", {}))
        put(s + 300, StatusUpdate(d.id, "bts", ts(s + 300), "offline", "battery exhausted"))
    for d in powered_off:
        s = 1500 + (rng.uniform(0, 120) if args.spread_s else 0.0)
        put(s, DeviceEvent(d.id, "bts", ts(s), "mains_power_restored", "info", {}))
        if d in low:
            put(s, StatusUpdate(d.id, "bts", ts(s), "online", None))
    for d in cams:
        s = 1500 + (rng.uniform(0, 120) if args.spread_s else 0.0)
        put(s, StatusUpdate(d.id, "camera", ts(s), "online", None))
    return at, city


def run(args: argparse.Namespace) -> dict[str, Any]:
    at, city = _timeline(args)
    hub = _Hub()
    for d in city.devices:
        hub.table.devices[d.id] = _Dev(d.kind, d.district, d.lat, d.lon)
    notify = NotifyConfig(smtp_host="127.0.0.1", webhook_urls=["http://127.0.0.1:9/hook"])
    stage = AlertStage(hub, None, GeoCity.load(), AlertsConfig(notify=notify))  # type: ignore[arg-type]
    stage.loaded = True
    stage._officers = [{"id": f"o{lvl}", "email": f"duty{lvl}@example.org", "active": True} for lvl in (1, 2)]
    stage.engine.shifts = [Shift(lvl, f"o{lvl}", lvl, T0 - timedelta(hours=1), T0 + timedelta(days=1))
                           for lvl in (1, 2)]
    steps: list[float] = []
    slow: list[tuple[float, int]] = []
    fired = opened = pages = rows = 0
    reasons: Counter[str] = Counter()
    first_incident: tuple[int, float] | None = None
    first_alarm_wall: float | None = None
    end = max(at) + args.tail_s
    wall0 = time.perf_counter()
    for s in range(end + 1):
        recs = at.get(s, [])
        if recs:
            stage.on_parsed(ParsedMessage(recs, []))
            if first_alarm_wall is None:
                first_alarm_wall = time.perf_counter()
        t = time.perf_counter()
        ch = stage.step(T0 + timedelta(seconds=s), store=False)
        stage._push(ch)
        for p in ch.pages:
            rows += len(stage._page_rows(p))
            reasons[p.reason] += 1
        steps.append(time.perf_counter() - t)
        slow.append((steps[-1], s))
        fired += sum(1 for e in ch.audit if e.action == "alert_opened")
        new = sum(1 for e in ch.audit if e.action == "incident_opened")
        opened += new
        pages += len(ch.pages)
        if new and first_incident is None:
            first_incident = (s, time.perf_counter() - (first_alarm_wall or wall0))
    steps.sort()
    n = len(steps)
    incidents = list(stage.engine.incidents.values())
    return {"steps": n, "p50_ms": 1000 * steps[n // 2], "p99_ms": 1000 * steps[min(n - 1, int(n * 0.99))],
            "max_ms": 1000 * steps[-1], "total_s": sum(steps), "alerts": fired, "incidents": opened,
            "pages": pages, "reasons": dict(reasons), "notifications": rows, "frames": hub.frames,
            "first_incident": first_incident, "slowest": sorted(slow, reverse=True)[:4],
            "largest": max(((len(i.members), i.title) for i in incidents), default=None)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spread-s", type=float, default=300.0, help="alarms spread over this span; 0: one tick")
    ap.add_argument("--power-share", type=float, default=0.9, help="share of BTS losing mains power")
    ap.add_argument("--tail-s", type=int, default=240, help="simulated seconds after the last record")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    r = run(args)
    print(f"province outage (spread {args.spread_s:.0f} s, {args.power_share:.0%} of BTS, seed {args.seed}): "
          f"{r['steps']} steps, step p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.0f} ms, "
          f"all steps {r['total_s']:.1f} s")
    fi = r["first_incident"]
    print(f"alerts {r['alerts']} -> incidents {r['incidents']}; pages {r['pages']} {r['reasons']}; "
          f"notifications queued {r['notifications']}; feed frames {r['frames']}")
    if fi:
        print(f"first incident: {fi[0]} s simulated after the first alarm, {fi[1] * 1000:.0f} ms wall")
    print("slowest steps (simulated second: ms): "
          + ", ".join(f"{sec}: {w * 1000:.0f}" for w, sec in r["slowest"]))
    print(f"largest incident: {r['largest']}")
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
