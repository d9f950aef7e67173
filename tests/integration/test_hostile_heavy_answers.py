"""Many large answers at once against a real `ioc serve --ingest` (ioc/api/heavy.py).

Before the fix each 100,000-row telemetry answer was validated and encoded on the event loop (~0.9 s each): 32 at
once made another address's API call take 6 s and a screen's snapshot time out after 15 s
(``benchmarks.heavy_answers``). Now such answers are read two at a time and encoded by orjson on a thread, one
caller may have 8 in progress (the rest 429 with Retry-After), and another address is served meanwhile.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ingest_env
from tests.support.auth import make_token_sync
from tests.support.services import ServeProcess

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # timing bounds: alone under xdist (tests/conftest.py)

ROWS = 60_000
DEVICE = f"heavy-{uuid.uuid4().hex[:6]}"
HOSTILE, OTHER = "127.0.0.1", "127.0.0.2"


async def _seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO telemetry (ts, device_id, metric, value, seq) SELECT now() - make_interval(secs => i * 0.05), "
            "$2, 'm' || (i % 4), i, i FROM generate_series(1, $1) AS i", ROWS, DEVICE)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def served(database_url: str, mqtt_port: int) -> Iterator[ServeProcess]:
    asyncio.run(_seed(database_url))
    env = ingest_env(database_url, mqtt_port, IOC_MQTT__CLIENT_ID=f"heavy-{uuid.uuid4().hex[:6]}",
                     IOC_TEST_ADMIN_TOKEN=make_token_sync(database_url, "admin"))
    log = Path(__file__).resolve().parents[2] / "artifacts" / "test_hostile_heavy_answers"
    log.mkdir(parents=True, exist_ok=True)
    with ServeProcess(env, log / "serve.log") as srv:
        yield srv


def _get(srv: ServeProcess, path: str, token: str, source: str) -> tuple[int, http.client.HTTPMessage, bytes, float]:
    began = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read(), time.monotonic() - began
    finally:
        conn.close()


def test_large_answers_at_once_leave_the_server_responsive(served: ServeProcess, database_url: str) -> None:
    hostile = make_token_sync(database_url, "viewer", f"hostile-{uuid.uuid4().hex[:6]}")
    other = served.auth_headers()["Authorization"].split()[1]
    path = f"/api/telemetry?device_id={DEVICE}&limit={ROWS}"
    probes: list[float] = []
    done = threading.Event()

    def probing() -> None:
        while not done.is_set():
            status, _, _, took = _get(served, "/api/devices?limit=5", other, OTHER)
            assert status == 200
            probes.append(took)
            time.sleep(0.05)

    prober = threading.Thread(target=probing)
    prober.start()
    try:
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(lambda _: _get(served, path, hostile, HOSTILE), range(24)))
    finally:
        done.set()
        prober.join()
    # before: ~0.5 s of event loop per answer, the other address waited seconds; now one answer's read at most
    assert len(probes) >= 3 and max(probes) < 1.0, probes
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(ok) >= 8 and len(ok) + len(refused) == 24, [r[0] for r in results]
    assert refused and all(r[1].get("Retry-After") for r in refused)
    rows = json.loads(ok[0][2])
    assert len(rows) == ROWS and set(rows[0]) == {"ts", "metric", "value", "seq"} and rows[0]["ts"].endswith("Z")
