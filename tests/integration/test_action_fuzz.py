"""No operator or admin action stops anything, whatever state the database is in: a stateful fuzz.

A real ``ioc serve`` on a database of its own, seeded with incidents and alerts an older version, a hand
repair or a partial clean-up may leave (tests/support/action_fuzz.py: incidents without alerts, with only
resolved or closed alerts, resolved or closed with a live alert, alerts of unknown or no device, times at
infinity, a severity the engine does not know, escalation state and evidence that are not objects; silences
and escalation policies the engine cannot use). Every
write operation of the app's OpenAPI is fuzzed (a route added later too), as an officer and as an admin,
alone and several at once: any 5xx, hang or 2xx that leaves an incident inconsistent fails the test.

On the code before this test: resolving an incident with no live alert answered 503 (a KeyError in the
action path), closing a resolved incident with a live alert answered 200 and left the alert open (and the
incident held in memory, answering "closed; resolve it first" after), and one row the engine could not read
kept it from loading for good: every action answered 503 "still loading", while /readyz said ready.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.conftest import ingest_env, own_database
from tests.support.action_fuzz import Fuzz, machine, seed_odd_states, write_operations
from tests.support.auth import make_token
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.integration


@dataclass
class Served:
    url: str
    dsn: str
    tokens: dict[str, str]
    odd: dict[str, list[int]]


@pytest.fixture(scope="module")
def odd_database() -> Iterator[str]:
    """A database of its own: its odd rows must not reach other tests' engines."""
    yield from own_database()


@pytest.fixture(scope="module")
def served(odd_database: str, mqtt_port: int) -> Iterator[Served]:
    tag = uuid.uuid4().hex[:6]
    odd = asyncio.run(seed_odd_states(odd_database, tag, copies=3))
    tokens = {role: asyncio.run(make_token(odd_database, role, f"fuzz-{role}-{tag}")) for role in ("officer", "admin")}
    env = ingest_env(odd_database, mqtt_port, IOC_LIVE__LISTEN_MQTT="false", IOC_AUTH__ACTION_RATE="1000000/minute",
                     IOC_AUTH__LOGIN_RATE="1000000/minute", IOC_LOG_LEVEL="WARNING")
    log = Path(__file__).resolve().parents[2] / "artifacts" / "test_action_fuzz"
    log.mkdir(parents=True, exist_ok=True)
    srv = ServiceProcess(env, log / "serve.log", ["serve"]).start()
    try:
        headers = {"Authorization": f"Bearer {tokens['admin']}"}
        deadline = time.monotonic() + 8  # the engine loads its state (on the old code it never did)
        while time.monotonic() < deadline:
            r = httpx.post(f"{srv.url}/api/incidents/987654321/comment", json={"note": "?"}, headers=headers)
            if r.status_code != 503:
                break
            time.sleep(0.2)
        yield Served(srv.url, odd_database, tokens, odd)
    finally:  # killed: its database is dropped next (a clean stop waits seconds for the brain's session)
        if srv.proc is not None:
            srv.proc.kill()
            srv.proc.wait(10)


def _client(served: Served, role: str = "officer") -> httpx.Client:
    return httpx.Client(base_url=served.url, timeout=5, headers={"Authorization": f"Bearer {served.tokens[role]}"})


def _db(served: Served, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(served.dsn)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def _members(served: Served, incident_id: int) -> list[str]:
    return [r["state"] for r in _db(served, "SELECT state FROM alerts WHERE incident_id = $1", incident_id)]


def _audit(served: Served, incident_id: int) -> list[str]:
    return [r["action"] for r in _db(served, "SELECT action FROM alert_events WHERE incident_id = $1 ORDER BY id",
                                     incident_id)]


@pytest.mark.parametrize("shape", ["open, no alerts", "acknowledged, no alerts", "open, its alert resolved",
                                   "open, its alert closed"])
def test_resolving_an_incident_without_live_alerts_resolves_it(served: Served, shape: str) -> None:
    incident_id = served.odd[shape][0]
    with _client(served) as api:
        r = api.post(f"/api/incidents/{incident_id}/resolve", json={"note": "cleared by hand"})
        assert r.status_code == 200, r.text  # was 503: "the action could not be applied" (a KeyError)
        assert r.json()["state"] == "resolved"
        assert _db(served, "SELECT state FROM incidents WHERE id = $1", incident_id)[0]["state"] == "resolved"
        assert "incident_resolved" in _audit(served, incident_id)
        r = api.post(f"/api/incidents/{incident_id}/resolve", json={})
        assert r.status_code == 409 and "already resolved" in r.json()["detail"]
        r = api.post(f"/api/incidents/{incident_id}/close", json={})
        assert r.status_code == 200 and r.json()["state"] == "closed", r.text
        assert api.post(f"/api/incidents/{incident_id}/close", json={}).status_code == 404  # forgotten: not live


def test_closing_a_resolved_incident_closes_its_live_alert(served: Served) -> None:
    incident_id = served.odd["resolved, its alert open"][0]
    assert _members(served, incident_id) == ["open"]
    with _client(served) as api:
        r = api.post(f"/api/incidents/{incident_id}/close", json={"note": "legacy row"})
        assert r.status_code == 200, r.text
        assert _members(served, incident_id) == ["closed"]  # was left open, the incident closed
        assert {"alert_resolved", "closed"} <= set(_audit(served, incident_id))
        r = api.post(f"/api/incidents/{incident_id}/resolve", json={})
        assert r.status_code == 404, r.text  # forgotten once closed (was held: 409 "already closed")


@pytest.mark.parametrize("shape", ["severity unknown", "escalation not an object", "evidence not an object"])
def test_a_row_the_engine_cannot_read_stops_nothing_else(served: Served, shape: str) -> None:
    """One unreadable row kept the engine from loading at all: every action answered 503 "still loading"."""
    with _client(served) as api:
        others = served.odd["open, device unknown"]
        r = api.post(f"/api/incidents/{others[0]}/comment", json={"note": "still works"})
        assert r.status_code == 200, r.text
        r = api.post(f"/api/incidents/{served.odd[shape][0]}/ack", json={})
        assert r.status_code in (200, 409), r.text
        if r.status_code == 409:
            assert "cannot be read" in r.json()["detail"]


def test_odd_silences_and_policies_stop_nothing(served: Served) -> None:
    """A policy for an unknown severity kept the engine from loading (so did a silence on a field alerts do not
    have, or whose matchers were not an object), while /readyz said ready."""
    with _client(served, "admin") as api:
        r = api.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready", r.text
        assert api.put("/api/officers/odd-officer", json={"name": "Lan"}).status_code == 200  # reloads them
        r = api.post(f"/api/incidents/{served.odd['open, no device'][0]}/ack", json={"note": "on my way"})
        assert r.status_code == 200 and r.json()["state"] == "acknowledged", r.text


def test_the_fuzz_of_every_write_operation_finds_nothing(served: Served) -> None:
    spec = httpx.get(f"{served.url}/openapi.json", headers={"Authorization": f"Bearer {served.tokens['admin']}"},
                     timeout=10).json()
    ops = write_operations(spec)
    labels = {op.label for op in ops}
    assert "POST /api/incidents/{incident_id}/{action}" in labels and "PATCH /api/silences/{silence_id}" in labels
    action = spec["paths"]["/api/incidents/{incident_id}/{action}"]["post"]["parameters"][1]["schema"]
    assert set(action.get("enum", [])) >= {"ack", "resolve", "close"}, action  # the fuzz draws every action
    fuzz = fuzz_writes(served, ops, int(os.environ.get("IOC_ACTION_FUZZ_EXAMPLES", "16")), 12, "action fuzz")
    assert fuzz.sent >= 100


def fuzz_writes(served: Served, ops: list[Any], examples: int, steps: int, what: str) -> Fuzz:
    """Run the stateful fuzz of ``ops`` against ``served`` (its own tokens protected); fails on any finding."""
    own = _db(served, "SELECT id FROM auth_tokens WHERE name LIKE 'fuzz-%'")
    fuzz = Fuzz(served.url, served.dsn, served.tokens, ops, {"/api/incidents": list(served.odd["all"])},
                protected={"token_id": {str(r["id"]) for r in own}}, max_per_op=max(8, examples // 2))
    started = time.monotonic()
    try:
        run_state_machine_as_test(machine(fuzz), settings=settings(
            max_examples=examples, stateful_step_count=steps, derandomize=True, database=None, deadline=None,
            phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck)))
    finally:
        fuzz.close()
    took = time.monotonic() - started
    print(f"{what}: {len(ops)} operations, {fuzz.sent} requests in {took:.1f} s, statuses "
          f"{dict(sorted(fuzz.statuses.items()))}")
    assert not fuzz.failures, "\n".join(map(str, fuzz.failures))
    return fuzz
