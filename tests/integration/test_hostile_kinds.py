"""One device id under several kinds (docs/fuzzing.md): the registry's kind holds, the rest is quarantined.

Two real ``ioc ingest`` processes in one share group (a cluster: each message goes to one of them), real Mosquitto
and PostgreSQL. A device registered before they start (the registry read from the database, not only memory), a
camera that then sends BTS telemetry, a traffic event and a BTS status, and 30 new ids each sent as a camera and
as a BTS at once (split between the two processes: the database decides): every message is stored under its
device's registry kind or quarantined ``kind_conflict`` with the reason in words, counted in /metrics, and the
device's own kind goes on. Then an administrator's ``ioc devices set-kind`` is followed within seconds.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from ingest.kinds import DeviceKinds
from ingest.records import Reason
from storage.kinds import set_kind
from storage.writes import BatchRows, write_batch
from tests.conftest import ingest_env
from tests.support.corpus import now_ms, small_jpeg
from tests.support.mqtt import Publisher, unique_id
from tests.support.services import IngestProcess, free_port

pytestmark = pytest.mark.integration

RACES = 30


def _conflicts(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    lines = [ln for ln in text.splitlines() if ln.startswith('ioc_ingest_quarantined_total{reason="kind_conflict"}')]
    return float(lines[0].split()[-1]) if lines else 0.0


async def _wait(what: str, check: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        await asyncio.sleep(0.1)


async def test_one_id_under_several_kinds_keeps_its_registry_kind_across_processes_and_restarts(
        database_url: str, mqtt_port: int, artifacts: Path) -> None:
    tag = unique_id("kinds")
    old, three, races = f"{tag}-old", f"{tag}-three", [f"{tag}-race{i}" for i in range(RACES)]
    conn = await asyncpg.connect(database_url)
    now = datetime.now(UTC)
    # in the registry before the processes start (an earlier run): a BTS
    await write_batch(conn, BatchRows(devices=[(old, "bts", now, now, None, None, None, None, None, None)]), "unnest")
    env = ingest_env(database_url, mqtt_port)
    ports = [free_port(), free_port()]
    workers = [IngestProcess(env | {"IOC_INGEST__METRICS_PORT": str(port)}, f"kinds-{uuid.uuid4().hex[:8]}",
                             artifacts / f"ingest{i}.log") for i, port in enumerate(ports)]
    pub = Publisher(mqtt_port)
    try:
        for w in workers:
            w.start()

        async def stored(device_id: str, metric: str | None = None) -> int:
            if metric is None:
                return int(await conn.fetchval("SELECT count(*) FROM snapshots WHERE device_id = $1", device_id))
            return int(await conn.fetchval("SELECT count(*) FROM telemetry WHERE device_id = $1 AND metric = $2",
                                           device_id, metric))

        pub.publish(f"ioc/v1/camera/{three}/snapshot", small_jpeg(3))
        pub.wait_all()
        await _wait("the camera's snapshot stored", lambda: stored(three))
        ts = now_ms()
        hostile = [
            (f"ioc/v1/camera/{old}/snapshot", small_jpeg(4)),
            (f"ioc/v1/traffic/{old}/event", {"ts": ts, "type": "door_open", "severity": "critical"}),
            (f"ioc/v1/bts/{three}/telemetry", {"ts": ts, "metrics": {"battery_pct": 5}}),
            (f"ioc/v1/traffic/{three}/event", {"ts": ts, "type": "door_open"}),
            (f"ioc/v1/bts/{three}/status", {"state": "offline", "ts": ts}),
        ]
        for topic, payload in hostile:
            pub.publish(topic, payload)
        for dev in races:  # back to back: the share group hands them to either process
            pub.publish(f"ioc/v1/camera/{dev}/telemetry", {"ts": ts, "metrics": {"fps": 25}})
            pub.publish(f"ioc/v1/bts/{dev}/telemetry", {"ts": ts, "metrics": {"battery_pct": 80}})
        # the devices' own kinds go on
        pub.publish(f"ioc/v1/bts/{old}/telemetry", {"ts": ts, "metrics": {"battery_pct": 70}})
        pub.publish(f"ioc/v1/camera/{three}/telemetry", {"ts": ts, "metrics": {"fps": 12}})
        pub.wait_all()

        async def quarantined() -> list[asyncpg.Record]:
            return await conn.fetch("SELECT topic, reason, detail FROM quarantine WHERE topic LIKE $1", f"%/{tag}-%")

        async def all_handled() -> bool:
            if not (await stored(old, "battery_pct") and await stored(three, "fps")):
                return False
            done = await conn.fetchval("SELECT count(DISTINCT device_id) FROM telemetry WHERE device_id = ANY($1)",
                                       races)
            return done == RACES and len(await quarantined()) == len(hostile) + RACES

        await _wait("every message stored or quarantined", all_handled)
        rows = await quarantined()
        assert {r["reason"] for r in rows} == {Reason.KIND_CONFLICT.value}
        by_topic = {r["topic"]: r["detail"] for r in rows}
        for topic, _ in hostile:
            assert topic in by_topic, f"{topic} not quarantined"
        assert by_topic[f"ioc/v1/bts/{three}/telemetry"].startswith(
            f"kind_conflict: device '{three}' is a camera, the message says bts")
        assert by_topic[f"ioc/v1/camera/{old}/snapshot"].startswith(
            f"kind_conflict: device '{old}' is a bts, the message says camera")
        # nothing of another kind under the ids: no BTS metric, event or status under the camera, no picture under
        # the BTS
        assert await stored(three, "battery_pct") == 0 and await stored(old) == 0
        assert await conn.fetchval("SELECT count(*) FROM device_events WHERE device_id = ANY($1)", [old, three]) == 0
        assert await conn.fetchval("SELECT count(*) FROM device_status WHERE device_id = $1", three) == 0
        kinds = {r["device_id"]: r["kind"] for r in await conn.fetch(
            "SELECT device_id, kind FROM devices WHERE device_id = ANY($1)", [old, three, *races])}
        assert kinds[old] == "bts" and kinds[three] == "camera"
        # each raced id: one kind won in the database, its message stored, the other kind's quarantined
        metric_of = {"camera": "fps", "bts": "battery_pct"}
        for dev in races:
            won = kinds[dev]
            lost = "bts" if won == "camera" else "camera"
            assert await stored(dev, metric_of[won]) == 1 and await stored(dev, metric_of[lost]) == 0, dev
            assert f"ioc/v1/{lost}/{dev}/telemetry" in by_topic, dev
        assert sum(_conflicts(p) for p in ports) == len(hostile) + RACES

        # an administrator re-provisions the camera as a BTS: the processes follow the registry within seconds
        out = subprocess.run([sys.executable, "-m", "ioc.cli", "devices", "set-kind", "bts", three],
                             env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and f"{three}: camera -> bts" in out.stdout, out
        started = time.monotonic()

        async def bts_stored() -> bool:
            pub.publish(f"ioc/v1/bts/{three}/telemetry", {"ts": now_ms(), "metrics": {"battery_pct": 50}})
            pub.wait_all()
            await asyncio.sleep(0.4)
            return await stored(three, "battery_pct") > 0

        await _wait("the BTS telemetry of the re-provisioned device stored", bts_stored, 15)
        print(f"set-kind followed after {time.monotonic() - started:.1f} s")
        assert all(w.alive() for w in workers)
    finally:
        pub.close()
        for w in workers:
            w.stop()
        await conn.close()


async def test_the_kinds_held_follow_the_registry(db: asyncpg.Connection) -> None:
    """Load at start, an administrator's change and a deletion seen at the next round, bounded to what needs it."""
    cam, gone, new = unique_id("k-cam"), unique_id("k-gone"), unique_id("k-new")
    now = datetime.now(UTC)
    await write_batch(db, BatchRows(devices=[(d, "camera", now, now, None, None, None, None, None, None)
                                             for d in (cam, gone)]), "unnest")
    kinds = DeviceKinds()
    await kinds.load(db)
    assert kinds.kind_of(cam) == kinds.kind_of(gone) == "camera"
    assert await set_kind(db, [cam, "no-such-device"], "traffic") == {cam: "camera"}
    await db.execute("DELETE FROM devices WHERE device_id = $1", gone)
    topic = f"ioc/v1/traffic/{cam}/telemetry"
    from ingest.parse import parse_message
    payload = b'{"ts": %d, "metrics": {"speed_kmh": 40}}' % now_ms()
    at = datetime.now(UTC)
    assert kinds.check(parse_message(topic, payload, at), topic, at, payload).rejections  # still camera here
    kinds.recheck.add(gone)
    kinds.check(parse_message(f"ioc/v1/bts/{new}/telemetry", payload, at), "", at, payload)  # provisional
    await kinds.refresh(db)
    assert kinds.kind_of(cam) == "traffic" and kinds.kind_of(gone) is None and not kinds.recheck
    assert kinds.kind_of(new) == "bts" and new in kinds.provisional  # not in the registry yet: still provisional
    assert kinds.check(parse_message(topic, payload, at), topic, at, payload).records
