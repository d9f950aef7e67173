"""Detection end to end: incidents the simulator injects over real MQTT become findings on the live feed.

A day of the city's normal life is written first (``ioc history``, as the demo does) so the numeric
detectors know what is usual for the hour; then ``ioc serve --ingest`` runs with its detectors, the
simulator plays the same city live with an accident on one road sensor and a covered camera lens, and
a WebSocket client subscribed to ``finding`` frames watches.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import websockets

from ioc.history import write_history
from ioc.settings import Settings
from simulators.scenario import load_scenario
from tests.conftest import BASE_DSN, create_database, drop_database, ingest_env
from tests.support.auth import bearer, make_token_sync
from tests.support.services import ServeProcess

pytestmark = pytest.mark.integration

ACCIDENT_AT, COVER_AT = 10, 20  # seconds after the live run starts


def scenario(prefix: str) -> dict[str, Any]:
    return {
        "name": "detection-feed", "seed": 11, "scale": "tiny", "id_prefix": prefix,
        "snapshot_width": 640, "snapshot_height": 360,
        "intervals": {"traffic_s": 10, "bts_s": 30, "camera_s": 30, "snapshot_s": 2},
        "incidents": [
            {"kind": "accident", "at": ACCIDENT_AT, "duration_s": 600, "device": f"{prefix}-AD-TRF-0001",
             "params": {"severity": 1.0, "spread_hops": 0, "ramp_s": 10}},
            {"kind": "camera_fault", "at": COVER_AT, "duration_s": 600, "device": f"{prefix}-HB-CAM-0001",
             "params": {"mode": "covered"}},
        ],
    }


def ts(frame: dict[str, Any]) -> float:
    return datetime.fromisoformat(frame["ts"].replace("Z", "+00:00")).timestamp()


async def watch(srv: ServeProcess, ours: str, want: dict[str, str], timeout: float) -> list[dict[str, Any]]:
    """Finding frames about our devices, until each device in ``want`` had the finding type named there."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    viewer = bearer(make_token_sync(srv.env["IOC_DATABASE_URL"], "viewer"))
    async with websockets.connect(f"ws://127.0.0.1:{srv.port}/ws/live?types=finding", additional_headers=viewer) as ws:
        while not all(any(f["device_id"] == d and f["finding_type"] == t for f in seen) for d, t in want.items()):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                frames = json.loads(await asyncio.wait_for(ws.recv(), left))
            except TimeoutError:
                break
            seen += [f for f in frames if f.get("type") == "finding" and f["device_id"].startswith(ours)]
    return seen


async def test_simulator_accident_and_covered_camera_are_findings_on_the_feed(mqtt_port: int, artifacts: Path,
                                                                              tmp_path: Path) -> None:
    prefix = f"df{uuid.uuid4().hex[:6]}"
    road, camera = f"{prefix}-AD-TRF-0001", f"{prefix}-HB-CAM-0001"
    spec = tmp_path / "scenario.json"
    spec.write_text(json.dumps(scenario(prefix)))
    dsn = await create_database(BASE_DSN)
    sim: subprocess.Popen[bytes] | None = None
    try:
        await write_history(Settings(database_url=dsn), load_scenario(spec), time.time(), hours=26.0)
        env = ingest_env(dsn, mqtt_port, IOC_MQTT__CLIENT_ID=f"df-{uuid.uuid4().hex[:6]}",
                         IOC_ANALYTICS__CAMERA_PROCESSES="1")
        with ServeProcess(env, artifacts / "serve.log") as srv:
            truth = tmp_path / "truth.jsonl"
            with (artifacts / "simulator.log").open("ab") as log:
                sim = subprocess.Popen(
                    [sys.executable, "-m", "simulators", "--scenario", str(spec), "--duration", "120",
                     "--mqtt-url", f"mqtt://127.0.0.1:{mqtt_port}", "--ground-truth", str(truth),
                     "--retain-expiry", "60"], env=env, stdout=log, stderr=subprocess.STDOUT)
            seen = await watch(srv, prefix, {road: "speed_collapse", camera: "occlusion"}, 100)
        (artifacts / "findings.json").write_text(json.dumps(seen, indent=1))
        onset = {json.loads(line)["devices"][0]: datetime.fromisoformat(json.loads(line)["start"].replace(
            "Z", "+00:00")).timestamp() for line in truth.read_text().splitlines()}

        collapse = [f for f in seen if f["device_id"] == road and f["finding_type"] == "speed_collapse"]
        assert collapse, seen
        # Readings come every 10 s and the accident ramps up over 10 s: caught within two readings.
        assert 0 <= ts(collapse[0]) - onset[road] <= 25, (collapse[0], onset[road])
        assert "km/h vs usual" in collapse[0]["explanation"] and "occupancy up" in collapse[0]["explanation"]
        covered = [f for f in seen if f["device_id"] == camera and f["finding_type"] == "occlusion"]
        assert covered and 0 <= ts(covered[0]) - onset[camera] <= 10, (covered, onset[camera])
        assert 0.5 <= covered[0]["score"] <= 1.0 and "covered" in covered[0]["explanation"]
        # Nothing about the two devices before their incidents began (the day of history was normal life).
        early = [f for f in seen if f["device_id"] in onset and ts(f) < onset[f["device_id"]]]
        assert early == [], early
    finally:
        if sim is not None and sim.poll() is None:
            sim.terminate()
            sim.wait(30)
        await drop_database(BASE_DSN, dsn)
