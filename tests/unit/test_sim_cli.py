"""The CLI surface: flags become a scenario and run options; --export-city needs no broker."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from simulators.city import DATA_DIR, build_city
from simulators.cli import add_arguments, options_from_args, run, scenario_from_args
from simulators.engine import SimOptions, resolve_start
from simulators.incidents import plan_incidents

pytestmark = pytest.mark.unit


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_override_the_scenario_file() -> None:
    args = _parse("--scenario", str(DATA_DIR / "demo.toml"), "--scale", "province", "--id-prefix", "X1",
                  "--traffic-interval", "10", "--random-incidents", "0", "--snapshot-size", "320x180",
                  "--processes", "2", "--speed", "60", "--duration", "30", "--connections", "per-device")
    sc = scenario_from_args(args)
    assert sc.sizes == (3240, 1582, 1000, 500) and sc.id_prefix == "X1" and sc.seed == 7
    assert sc.intervals.traffic_s == 10 and sc.intervals.bts_s == 60 and sc.random_incidents.count == 0
    assert (sc.snapshot_width, sc.snapshot_height) == (320, 180) and len(sc.incidents) == 4
    opts = options_from_args(args, "mqtt://broker:1884")
    assert (opts.processes, opts.speed, opts.duration_s, opts.connections) == (2, 60, 30, "per-device")
    assert opts.mqtt_url == "mqtt://broker:1884"


def test_accelerated_runs_end_at_the_present() -> None:
    now = time.time()
    assert resolve_start(SimOptions(speed=60, duration_s=120), now) == now - 7200
    assert resolve_start(SimOptions(), now) == now
    with pytest.raises(ValueError):
        resolve_start(SimOptions(start=now + 3600), now)
    city = build_city(scenario_from_args(_parse("--scenario", str(DATA_DIR / "demo.toml"))))
    assert len(plan_incidents(city, now - 7200, now)) == 7


def test_export_city_writes_geojson_without_a_broker(tmp_path) -> None:
    out = tmp_path / "city.geojson"
    assert run(_parse("--export-city", str(out), "--scale", "tiny"), "mqtt://127.0.0.1:9") == 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    devices = [f for f in doc["features"] if f["properties"]["layer"] == "device"]
    assert len(devices) == 15 and {"district", "road", "neighbours"} <= set(devices[0]["properties"])
