"""Command-line surface of the simulator, mounted by the main CLI as ``ioc simulate``.

``add_arguments`` fills a parser; ``run`` executes with the broker URL the caller resolved (settings).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from pathlib import Path

import orjson

from ingest.tls import TlsOptions
from simulators.city import build_city
from simulators.clock import parse_time
from simulators.engine import SimOptions, Simulator
from simulators.scenario import SCALES, Scenario, load_scenario
from simulators.transport import TransportError

logger = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError("size must look like 640x360") from None
    return w, h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's options to ``parser``."""
    g = parser.add_argument_group("what to simulate")
    g.add_argument("--scenario", type=Path, help="scenario file (.json or .toml); flags below override it")
    g.add_argument("--scale", choices=sorted(SCALES), help="fleet size preset (default small; province = "
                   "3,240 BTS at 1,582 sites, 1,000 cameras, 500 traffic sensors)")
    g.add_argument("--bts", type=int, help="BTS cells")
    g.add_argument("--bts-sites", type=int, help="BTS sites (several cells per site)")
    g.add_argument("--cameras", type=int, help="cameras")
    g.add_argument("--traffic", type=int, help="traffic sensors")
    g.add_argument("--seed", type=int, help="seed for placement, signals and random incidents (default 1)")
    g.add_argument("--id-prefix", help="device id prefix (default the city code, HP); use a unique one in tests")
    g.add_argument("--random-incidents", type=int, help="number of random incidents over the simulated span")
    g.add_argument("--traffic-interval", type=float, help="traffic telemetry period, simulated s (default 30)")
    g.add_argument("--bts-interval", type=float, help="BTS telemetry period, simulated s (default 60)")
    g.add_argument("--camera-interval", type=float, help="camera telemetry period, simulated s (default 60)")
    g.add_argument("--snapshot-interval", type=float, help="camera snapshot period, simulated s (default 60)")
    g.add_argument("--snapshot-size", type=_size, help="snapshot size WxH (default 640x360)")

    r = parser.add_argument_group("how to run")
    r.add_argument("--duration", type=float, default=60.0, help="real seconds to run (default 60; 0 = until Ctrl-C)")
    r.add_argument("--speed", type=float, default=1.0,
                   help="simulated seconds per real second (60 = an hour per minute); ts are simulated time")
    r.add_argument("--start", help="simulated start, RFC 3339 or YYYY-MM-DD (local midnight); default now, or "
                   "now minus duration*speed when accelerated so the run ends at the present")
    r.add_argument("--processes", type=int, default=1, help="generator processes (devices are split between them)")
    r.add_argument("--connections", choices=["pooled", "per-device"], default="pooled",
                   help="pooled: a few connections, deaths published as offline statuses (default); "
                   "per-device: one connection and last will per device (small fleets)")
    r.add_argument("--pool-size", type=int, default=2, help="connections per process in pooled mode (default 2)")
    r.add_argument("--ts-format", choices=["ms", "rfc3339"], default="ms", help="telemetry ts format")
    r.add_argument("--no-snapshots", action="store_true", help="do not send camera snapshots")
    r.add_argument("--no-offline-on-exit", action="store_true", help="leave devices 'online' when the run ends")
    r.add_argument("--retain-expiry", type=int, help="MQTT 5 expiry (s) of retained statuses and wills")
    r.add_argument("--first-report-within", type=float, metavar="S",
                   help="every device's first reading within S simulated seconds (default: over one period)")
    r.add_argument("--report-every", type=float, default=5.0, help="seconds between progress lines")

    o = parser.add_argument_group("outputs")
    o.add_argument("--ground-truth", default="sim-ground-truth.jsonl",
                   help="incident ground truth, JSON lines (default ./sim-ground-truth.jsonl; '' to skip)")
    o.add_argument("--stats-json", type=Path, help="write the achieved rates here at the end")
    o.add_argument("--export-city", type=Path, help="write the city (districts, roads, devices) as GeoJSON and exit")


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """The scenario the file and flags describe."""
    overrides = {"scale": args.scale, "bts": args.bts, "bts_sites": args.bts_sites, "cameras": args.cameras,
                 "traffic": args.traffic, "seed": args.seed, "id_prefix": args.id_prefix}
    if args.scenario:
        sc = load_scenario(args.scenario, **overrides)
    else:
        sc = Scenario.model_validate({k: v for k, v in overrides.items() if v is not None})
    updates: dict[str, object] = {}
    iv = {"traffic_s": args.traffic_interval, "bts_s": args.bts_interval, "camera_s": args.camera_interval,
          "snapshot_s": args.snapshot_interval}
    if any(v is not None for v in iv.values()):
        updates["intervals"] = sc.intervals.model_copy(update={k: v for k, v in iv.items() if v is not None})
    if args.random_incidents is not None:
        updates["random_incidents"] = sc.random_incidents.model_copy(update={"count": args.random_incidents})
    if args.snapshot_size:
        updates["snapshot_width"], updates["snapshot_height"] = args.snapshot_size
    merged = sc.model_dump()
    merged.update({k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in updates.items()})
    return Scenario.model_validate(merged)


def options_from_args(args: argparse.Namespace, mqtt_url: str, tls: TlsOptions | None = None) -> SimOptions:
    """Run options from the flags (``tls``: CA / client certificate files for an mqtts:// URL)."""
    return SimOptions(mqtt_url=mqtt_url, tls=tls, connections=args.connections, pool_size=args.pool_size,
                      processes=args.processes, speed=args.speed,
                      start=parse_time(args.start) if args.start else None,
                      duration_s=args.duration or None, ts_format=args.ts_format,
                      ground_truth=args.ground_truth or None, offline_on_exit=not args.no_offline_on_exit,
                      retain_expiry_s=args.retain_expiry, report_every_s=args.report_every,
                      snapshots=not args.no_snapshots, first_report_within_s=args.first_report_within)


def run(args: argparse.Namespace, mqtt_url: str, tls: TlsOptions | None = None) -> int:
    """Run the simulator as the flags say; 0 on success, 1 on a broker problem, 2 on bad options."""
    try:
        scenario = scenario_from_args(args)
        city = build_city(scenario)
        if args.export_city:
            args.export_city.write_bytes(orjson.dumps(city.to_geojson(), option=orjson.OPT_INDENT_2))
            print(f"city written to {args.export_city} ({len(city.devices)} devices)")
            return 0
        sim = Simulator(city, options_from_args(args, mqtt_url, tls))
    except (ValueError, OSError, KeyError) as err:
        logger.error("%s", err)
        return 2
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):
                signal.signal(sig, lambda *_: stop.set())
    try:
        stats = sim.run(stop)
    except TransportError as err:
        logger.error("%s", err)
        return 1
    print(stats.summary())
    if args.stats_json:
        args.stats_json.write_bytes(orjson.dumps(stats.to_dict(), option=orjson.OPT_INDENT_2))
    return 1 if stats.failed_shards else 0
