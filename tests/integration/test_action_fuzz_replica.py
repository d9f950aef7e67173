"""The stateful action fuzz of ``test_action_fuzz.py``, sent to an API replica instead of the leader.

An ``ioc serve --role api`` runs no alert engine: an officer's action becomes a ``cluster_actions`` row the
leader (here an ``ioc serve``, role ``all``, on the same database) applies and answers. The same odd rows, every
write operation of the replica's OpenAPI, as officer and admin: any 5xx, hang, or 2xx that leaves an incident
inconsistent fails the test; so does an action row left pending once the fuzz is over, and a leader that stops
applying actions afterwards (a last comment through the replica must still land).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ingest_env, own_database
from tests.integration.test_action_fuzz import Served, _db, fuzz_writes
from tests.support.action_fuzz import seed_odd_states, write_operations
from tests.support.auth import make_token
from tests.support.services import ServiceProcess

pytestmark = pytest.mark.integration


class ApiReplica(ServiceProcess):
    """``ioc serve --role api``: up when /healthz answers (it is never the leader)."""

    ready_path = "/healthz"


@pytest.fixture(scope="module")
def replica(mqtt_port: int) -> Iterator[Served]:
    dsn_iter = own_database()  # odd rows of its own: they must not reach other tests' engines
    dsn = next(dsn_iter)
    tag = uuid.uuid4().hex[:6]
    odd = asyncio.run(seed_odd_states(dsn, tag, copies=3))
    tokens = {role: asyncio.run(make_token(dsn, role, f"fuzz-{role}-{tag}")) for role in ("officer", "admin")}
    env = ingest_env(dsn, mqtt_port, IOC_LIVE__LISTEN_MQTT="false", IOC_AUTH__ACTION_RATE="1000000/minute",
                     IOC_AUTH__LOGIN_RATE="1000000/minute", IOC_LOG_LEVEL="WARNING", IOC_CLUSTER__HEARTBEAT_S="1",
                     IOC_ALERTS__TICK_S="0.5")
    log = Path(__file__).resolve().parents[2] / "artifacts" / "test_action_fuzz_replica"
    log.mkdir(parents=True, exist_ok=True)
    leader = ServiceProcess(env, log / "leader.log", ["serve"]).start()
    api = ApiReplica(env, log / "api.log", ["serve", "--role", "api"]).start()
    try:
        headers = {"Authorization": f"Bearer {tokens['admin']}"}
        deadline = time.monotonic() + 20  # the leader loads its state and the replica sees it lead
        while time.monotonic() < deadline:
            r = httpx.post(f"{api.url}/api/incidents/987654321/comment", json={"note": "?"}, headers=headers,
                           timeout=10)
            if r.status_code != 503:
                break
            time.sleep(0.3)
        assert r.status_code == 404, r.text  # applied by the leader: no such incident
        yield Served(api.url, dsn, tokens, odd)
    finally:  # killed: the database is dropped next (a clean stop waits seconds for the brain's session)
        for proc in (api, leader):
            if proc.proc is not None:
                proc.proc.kill()
                proc.proc.wait(10)
        next(dsn_iter, None)


def test_the_fuzz_through_an_api_replica_finds_nothing(replica: Served) -> None:
    admin = {"Authorization": f"Bearer {replica.tokens['admin']}"}
    spec = httpx.get(f"{replica.url}/openapi.json", headers=admin, timeout=10).json()
    ops = write_operations(spec)
    assert "POST /api/incidents/{incident_id}/{action}" in {op.label for op in ops}
    examples = int(os.environ.get("IOC_ACTION_FUZZ_EXAMPLES", "12"))
    fuzz = fuzz_writes(replica, ops, examples, 10, "action fuzz through an API replica")
    assert fuzz.sent >= 80

    deadline = time.monotonic() + 15
    while (pending := _db(replica, "SELECT id, action FROM cluster_actions WHERE status = 'pending'")) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not pending, pending  # every action the replica queued was applied or failed for good
    done = _db(replica, "SELECT count(*) AS n FROM cluster_actions WHERE status = 'done'")[0]["n"]
    assert done >= 5, done  # the fuzz did go through the leader's action queue
    target = replica.odd["open, device unknown"][0]
    r = httpx.post(f"{replica.url}/api/incidents/{target}/comment", json={"note": "still applied after the fuzz"},
                   headers={"Authorization": f"Bearer {replica.tokens['officer']}"}, timeout=15)
    assert r.status_code in (200, 404, 409), r.text  # the leader still applies actions (404: closed by the fuzz)
