"""End to end with the numeric analytics on a partition worker: MQTT -> `ioc ingest` (committed readings onto
NATS JetStream) -> `ioc analytics-worker` (the detectors) -> findings on the stream -> the brain holding the
lease (`ioc serve --role brain`) -> an incident in the database. Real Mosquitto, NATS, PostgreSQL, processes.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ingest_env
from tests.support.auth import make_token_sync
from tests.support.cluster import RoleProcess, cluster_env, db_fetch, unique_lease, wait_for
from tests.support.mqtt import Publisher, unique_id
from tests.support.services import IngestProcess

pytestmark = pytest.mark.integration

HB = (20.868, 106.65)  # inside Hồng Bàng


def test_a_bts_losing_mains_is_found_by_a_partition_worker_and_alerted_by_the_brain(
        database_url: str, mqtt_port: int, artifacts: Path) -> None:
    for log in ("brain.log", "ingest.log", "analytics-worker.log"):  # waits below read these logs
        (artifacts / log).unlink(missing_ok=True)
    stream = f"T{uuid.uuid4().hex[:10]}"
    partition = {"IOC_PARTITION__NATS_URL": "nats://127.0.0.1:4222", "IOC_PARTITION__STREAM": stream,
                 "IOC_PARTITION__PARTITIONS": "4"}
    name = unique_lease()
    brain = RoleProcess(cluster_env(database_url, mqtt_port, name, **partition), "brain", artifacts / "brain.log",
                        make_token_sync(database_url, "admin", f"part-{name}"))
    ingest = IngestProcess(ingest_env(database_url, mqtt_port, **partition), f"it-{uuid.uuid4().hex[:8]}",
                           artifacts / "ingest.log")
    env = {**ingest.env, "IOC_LOG_LEVEL": "INFO"}
    with (artifacts / "analytics-worker.log").open("ab") as out:
        worker = subprocess.Popen([sys.executable, "-m", "ioc.cli", "analytics-worker", "--id", "w1"], env=env,
                                  stdout=out, stderr=subprocess.STDOUT)
    brain.start()
    ingest.start()
    pub = Publisher(mqtt_port)
    device = unique_id("BTS")
    try:
        wait_for(lambda: "partition" in (artifacts / "analytics-worker.log").read_text(), 60,
                 what="the analytics worker takes its partitions")
        wait_for(lambda: "MQTT connected" in (artifacts / "ingest.log").read_text(), 90, what="ingest subscribed")
        start = time.time()
        for k in range(8):  # on mains, then on battery
            mains = 1.0 if k < 3 else 0.0
            pub.publish(f"ioc/v1/bts/{device}/telemetry", {
                "ts": int((start - 60 * (8 - k)) * 1000), "lat": HB[0], "lon": HB[1],
                "metrics": {"mains_power": mains, "battery_pct": 100.0 - 2 * max(0, k - 3)}})
        pub.wait_all()
        wait_for(lambda: db_fetch(database_url, "SELECT 1 FROM telemetry WHERE device_id = $1", device), 30,
                 what="the readings stored")
        alerts = wait_for(lambda: db_fetch(database_url, "SELECT rule, incident_id FROM alerts WHERE device_id = $1",
                                           device), 60, what="the brain's alert from the worker's finding")
        assert [a["rule"] for a in alerts] == ["mains_power_lost"] and alerts[0]["incident_id"] is not None
        found = db_fetch(database_url, "SELECT type FROM findings WHERE device_id = $1", device)
        assert {f["type"] for f in found} == {"mains_power_lost"}
    finally:
        pub.close()
        worker.terminate()
        worker.wait(30)
        ingest.stop()
        brain.stop()
