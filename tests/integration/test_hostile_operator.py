"""No request or operator action stops anything: hostile times and actions through a real `ioc serve --ingest`.

Found by H4's probes: a silence starting at 0001-01-01T00:00:00Z was stored as -infinity (asyncpg maps the
edges of ``datetime`` to PostgreSQL's infinities) and read back without a time zone; comparing it stopped the
alert engine's task for good (and, after a restart, kept the engine from loading), while /readyz said ready.
A time near year 1 in ``end`` answered 500 (the default window overflowed).

A policy step of NaN was stored too, and made every tick's escalation raise. Here, on a database of its own: a
silence holding -infinity / infinity and a policy step of null as an older version stored them, every
time parameter and body field given hostile times, actions on missing, closed and concurrently acted-on
incidents with hostile text; afterwards a device's alarm still raises its alert and the process is ready.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import BASE_DSN, create_database, drop_database, ingest_env
from tests.support.auth import make_token
from tests.support.mqtt import Publisher, unique_id
from tests.support.services import ServeProcess, wait_until

pytestmark = pytest.mark.integration

HOSTILE_TIMES = ["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999999Z",
                 "9999-12-31T23:59:59-01:00", "1900-01-01T00:00:00Z", "2026-13-45", "1e400", "NaN", "-1", ""]


@pytest.fixture
async def own_database() -> AsyncIterator[str]:
    """A database of its own: the infinite silences stored here must not reach other tests."""
    dsn = await create_database(BASE_DSN)
    yield dsn
    await drop_database(BASE_DSN, dsn)


async def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await predicate()
        if found:
            return found
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


async def test_hostile_times_and_actions_stop_nothing(own_database: str, mqtt_port: int, artifacts: Path) -> None:
    conn = await asyncpg.connect(own_database)
    try:  # what an older version let in: a silence over every time, on another device
        await conn.execute("INSERT INTO silences (matchers, starts_at, ends_at, reason, author) VALUES "
                           "('{\"device_id\": \"elsewhere\"}', '-infinity', 'infinity', 'forever', 'old')")
        # and an escalation policy for every incident whose second step is NaN (stored as null)
        await conn.execute("INSERT INTO escalation_policies (id, name, min_severity, steps, repeat, channels) VALUES "
                           "('nan-step', 'old', 'info', '[{\"after_min\": 0, \"level\": 1}, "
                           "{\"after_min\": null, \"level\": 2}]', 100, '[\"webhook\"]')")
    finally:
        await conn.close()
    env = ingest_env(own_database, mqtt_port, IOC_MQTT__CLIENT_ID=f"hostop-{uuid.uuid4().hex[:6]}",
                     IOC_AUTH__ACTION_RATE="10000/minute",
                     IOC_TEST_ADMIN_TOKEN=await make_token(own_database, "admin"))
    log_path = artifacts / "serve.log"
    log_from = log_path.stat().st_size if log_path.exists() else 0  # the log is appended to, run after run
    with ServeProcess(env, log_path) as srv:
        async with httpx.AsyncClient(base_url=srv.url, headers=srv.auth_headers(), timeout=30) as api:
            failures: list[tuple[str, int, str]] = []

            def check(resp: httpx.Response) -> httpx.Response:
                if resp.status_code >= 500:
                    failures.append((f"{resp.request.method} {resp.request.url}", resp.status_code, resp.text[:200]))
                return resp

            assert check(await api.put("/api/officers/op-1", json={"name": "Lan"})).status_code == 200
            # every time a request carries, hostile
            for t in HOSTILE_TIMES:
                q = urllib.parse.quote(t)
                for path in (f"/api/telemetry?device_id=d&start={q}", f"/api/telemetry?device_id=d&end={q}",
                             f"/api/telemetry?device_id=d&end={q}&bucket=5m", f"/api/findings?since={q}",
                             f"/api/incidents?since={q}", f"/api/alerts?since={q}", f"/api/shifts?since={q}",
                             f"/api/oncall?at={q}", f"/api/devices/d/snapshot?at={q}",
                             f"/api/devices/d/status?start={q}", f"/api/devices/d/status?end={q}",
                             f"/api/devices/d/events?start={q}", f"/api/devices/d/events?end={q}"):
                    check(await api.get(path))
                later = "2030-01-01T00:00:00Z"
                silences: list[dict[str, Any]] = [
                    {"matchers": {"device_id": "x"}, "ends_at": t, "reason": "r"},
                    {"matchers": {"device_id": "x"}, "starts_at": t, "ends_at": later, "reason": "r"}]
                for body in silences:
                    assert check(await api.post("/api/silences", json=body)).status_code == 422, body
                for body in ({"officer_id": "op-1", "starts_at": t, "ends_at": later},
                             {"officer_id": "op-1", "starts_at": "2026-01-01T00:00:00Z", "ends_at": t}):
                    assert check(await api.post("/api/shifts", json=body)).status_code == 422, body
                check(await api.patch("/api/silences/1", json={"ends_at": t}))
            made = check(await api.post("/api/silences", json={"matchers": {"device_id": "x"}, "reason": "r",
                                                                "starts_at": "2029-01-01T00:00:00Z",
                                                                "ends_at": "2030-01-01T00:00:00Z"})).json()
            r = check(await api.patch(f"/api/silences/{made['id']}", json={"ends_at": "2028-01-01T00:00:00Z"}))
            assert r.status_code == 422, r.text  # ends before it starts: the table's CHECK, the caller's error
            for after in ("NaN", "Infinity", "-1", "1e308", "null", '"x"', "[]"):  # escalation steps
                body = ('{"name": "p", "min_severity": "info", "repeat": 5, "steps": [{"after_min": 0, "level": 1}, '
                        f'{{"after_min": {after}, "level": 2}}]}}')
                r = check(await api.put("/api/policies/hostile", content=body,
                                        headers={"Content-Type": "application/json"}))
                assert r.status_code == 422, (after, r.status_code)
            for path in ("/api/shifts", "/api/silences", "/api/officers/op-2", "/api/auth/login"):  # NaN echoed back
                method = "PUT" if "officers" in path else "POST"
                r = check(await api.request(method, path, content='{"level": NaN, "name": Infinity}',
                                            headers={"Content-Type": "application/json"}))
                assert r.status_code == 422, (path, r.status_code)

            # an incident to act on: a BTS's door opens
            pub = Publisher(mqtt_port)
            try:
                first = unique_id("hostop")
                pub.publish(f"ioc/v1/bts/{first}/event", {"ts": int(time.time() * 1000), "type": "door_open",
                                                          "severity": "critical"})
                pub.wait_all()

                async def incident_of(device: str) -> int | None:
                    alerts = (await api.get("/api/alerts", params={"device_id": device})).json()
                    return alerts[0]["incident_id"] if alerts else None

                inc = await _wait_for(lambda: incident_of(first), 30, "the first alert")
                hostile_notes = ["x" * 2001, "a\x00b", "\u202egnp.exe", "\ud800", "ok\u0007", "", None]
                for note in hostile_notes:
                    check(await api.post(f"/api/incidents/{inc}/comment", content=json.dumps({"note": note}),
                                         headers={"Content-Type": "application/json"}))  # \ud800 as an escape
                bodies: list[Any] = [{"assignee": "x" * 65}, {"assignee": "nobody"}, {"note": 5}, {"actor": ["a"]},
                                     {"unknown": 1}, [], "text"]
                for hostile in bodies:
                    check(await api.post(f"/api/incidents/{inc}/assign", json=hostile))
                # the same actions at once, twice each, then on a closed incident and on missing ones
                burst = [api.post(f"/api/incidents/{inc}/{a}", json={"note": "n"})
                         for a in ("ack", "ack", "resolve", "resolve", "comment", "close", "close", "ack")]
                codes = [check(r).status_code for r in await asyncio.gather(*burst)]
                assert all(c < 500 for c in codes), codes
                for a in ("ack", "assign", "comment", "resolve", "close", "reopen", "%00", "x" * 300):
                    check(await api.post(f"/api/incidents/{inc}/{urllib.parse.quote(a)}", json={"note": "n"}))
                for missing in ("999999999", "0", "-1", "9" * 30):
                    r = check(await api.post(f"/api/incidents/{missing}/ack", json={}))
                    assert r.status_code in (404, 422), (missing, r.status_code)
                assert not failures, failures

                # the engine still judges: a second device's alarm raises its alert
                second = unique_id("hostop")
                pub.publish(f"ioc/v1/bts/{second}/event", {"ts": int(time.time() * 1000), "type": "door_open",
                                                           "severity": "critical"})
                pub.wait_all()
                await _wait_for(lambda: incident_of(second), 30, "an alert after the hostile actions")
            finally:
                pub.close()
            stored = (await api.get("/api/silences")).json()
            forever = [s for s in stored if s["reason"] == "forever"]
            assert forever and forever[0]["starts_at"].startswith("0001-01-01")
        wait_until(lambda: srv.get("/readyz").get("status") == "ready", 20, 0.2, what="ready after the hostile actions")
        log = log_path.read_bytes()[log_from:].decode(errors="replace")
        assert "alert engine step raised" not in log and "brain task" not in log, json.dumps(log[-2000:])
