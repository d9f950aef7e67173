"""The whole cluster through outages, on a private PostgreSQL and a private (persistent) Mosquitto.

Two ingest workers (one share group), two brain candidates and an API replica. A steady telemetry stream
runs throughout while alarms are raised; during the run: PostgreSQL is stopped for 20 s, an ingest worker
is SIGKILLed (and restarted), the broker is restarted, the leader is SIGKILLed. Asserted: every reading
stored once, every alarm became an incident once, no page queued twice, the survivor leads at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import create_database, ingest_env
from tests.support.auth import make_token_sync
from tests.support.cluster import (
    RoleProcess,
    TelemetryStream,
    cluster_env,
    db_fetch,
    lease,
    persistent_broker,
    unique_lease,
    wait_for,
)
from tests.support.mqtt import Publisher, iso, unique_id
from tests.support.services import IngestProcess, private_postgres

pytestmark = pytest.mark.integration

HOOK = "http://127.0.0.1:9/ha-outage-hook"


def _alarm(port: int, device: str) -> None:
    pub = Publisher(port)
    try:
        pub.publish(f"ioc/v1/bts/{device}/event", {"ts": iso(time.time()), "type": "mains_power_lost",
                                                   "severity": "major", "detail": {}})
        pub.wait_all(20)
    finally:
        pub.close()


def _incidents(dsn: str, device: str) -> list[int]:
    try:
        rows = db_fetch(dsn, "SELECT DISTINCT incident_id FROM alerts WHERE device_id = $1", device)
    except OSError:
        return []
    return sorted(r["incident_id"] for r in rows if r["incident_id"] is not None)


def test_cluster_through_outages(artifacts: Path) -> None:
    with contextlib.ExitStack() as stack:
        pg = stack.enter_context(private_postgres())
        broker = stack.enter_context(persistent_broker())
        dsn = asyncio.run(create_database(pg.dsn))
        name = unique_lease()
        token = make_token_sync(dsn, "admin", "outages")
        env = cluster_env(dsn, broker.port, name, IOC_ALERTS__NOTIFY__WEBHOOK_URLS=f'["{HOOK}"]',
                          IOC_ANALYTICS__ENABLED="false")
        ienv = ingest_env(dsn, broker.port)
        workers = [IngestProcess(ienv, f"ha-ingest-{uuid.uuid4().hex[:6]}-{i}", artifacts / f"ingest-{i}.log")
                   for i in range(2)]
        procs = [RoleProcess(env, "brain", artifacts / f"brain-{i}.log", token) for i in range(2)]
        api = RoleProcess(env, "api", artifacts / "api.log", token)
        for w in workers:
            stack.enter_context(w)
        for p in (*procs, api):
            p.start(wait=False)
            stack.callback(p.stop)
        for p in (*procs, api):
            wait_for(p._up, 60, what=f"{p.role} up")
        wait_for(lambda: lease(dsn, name)["valid"], 20, what="a leader")

        stream = stack.enter_context(TelemetryStream(broker.port, unique_id("HA")))
        alarms = {step: unique_id("bts") for step in ("start", "pg-down", "worker-killed", "broker", "leader")}

        _alarm(broker.port, alarms["start"])
        wait_for(lambda: _incidents(dsn, alarms["start"]), 20, what="the first incident")

        pg.stop()  # PostgreSQL away for 20 s: nothing acked is lost, alarms wait at the broker
        _alarm(broker.port, alarms["pg-down"])
        time.sleep(20)
        pg.start()
        wait_for(lambda: _incidents(dsn, alarms["pg-down"]), 45, 0.2, what="the alarm raised while the DB was down")

        workers[0].kill()
        _alarm(broker.port, alarms["worker-killed"])
        wait_for(lambda: _incidents(dsn, alarms["worker-killed"]), 30, what="the alarm after an ingest worker died")
        workers[0].start()  # as its supervisor would: it resumes its session and stores what it held unacked

        broker.stop()
        broker.start()
        _alarm(broker.port, alarms["broker"])
        wait_for(lambda: _incidents(dsn, alarms["broker"]), 45, 0.2, what="the alarm after the broker restarted")

        holder = wait_for(lambda: (r := lease(dsn, name))["valid"] and r["holder"], 20, what="the leader")
        lead = next(p for p in procs if p.pid == int(holder.rsplit("-", 2)[1]))
        lead.kill()
        _alarm(broker.port, alarms["leader"])
        wait_for(lambda: _incidents(dsn, alarms["leader"]), 30, what="the alarm raised while the leader was dead")

        stream.close()
        wait_for(lambda: stream.stored(dsn)["n"] >= stream.acked, 60, 0.5, what="every reading stored")
        stored = stream.stored(dsn)
        per_alarm = {step: _incidents(dsn, device) for step, device in alarms.items()}
        pages = db_fetch(dsn, "SELECT incident_id, reason, target, count(*) AS n FROM notifications "
                         "GROUP BY incident_id, reason, target")
        final = lease(dsn, name)
        survivor = next(p for p in procs if p is not lead)
    # Every reading the broker acknowledged is stored, once (a batch cut by the broker restart may be stored
    # without its acknowledgement having reached the publisher: more rows than counted is fine, duplicates not).
    assert stored["n"] == stored["d"] and stored["n"] >= stream.acked, (stored, stream.acked)
    assert all(len(found) == 1 for found in per_alarm.values()), per_alarm  # each alarm analysed, once
    assert pages and all(p["n"] == 1 for p in pages), pages  # no page queued twice
    assert final["valid"] and int(final["holder"].rsplit("-", 2)[1]) == survivor.pid
