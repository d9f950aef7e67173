"""/api/telemetry at scale: truncated answers say so and page fully; buckets come from the rollups;
ranges past retention are refused (PostgreSQL fallback; the rollup reads on both backends are in
test_storage_contract.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from ioc.api.routes_devices import parse_bucket
from storage import queries
from storage.db import STAGING_DDL, Backend
from storage.rollups import complete_before, refresh_recent
from storage.writes import BatchRows, write_batch
from tests.support.mqtt import unique_id

pytestmark = pytest.mark.integration


async def _write(database_url: str, rows: Sequence[tuple[object, ...]]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(STAGING_DDL)
        await write_batch(conn, BatchRows(telemetry=list(rows)), "copy")  # type: ignore[arg-type]
    finally:
        await conn.close()


async def _pages(api: httpx.AsyncClient, params: dict[str, str]) -> tuple[list[dict[str, object]], int]:
    r = await api.get("/api/telemetry", params=params)
    out, pages = [], 0
    while True:
        assert r.status_code == 200, r.text
        out += r.json()
        pages += 1
        if "link" not in r.headers:
            assert "x-truncated" not in r.headers
            return out, pages
        assert r.headers["x-truncated"] == "true" and r.headers["link"].endswith('>; rel="next"')
        r = await api.get(r.headers["link"][1:].split(">;")[0])


async def test_a_truncated_answer_says_so_and_pages_fully(api: httpx.AsyncClient, database_url: str) -> None:
    dev = unique_id("TP")
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5)
    rows = [(t0 + timedelta(seconds=30 * i), dev, m, float(i), i) for i in range(500)
            for m in ("flow_veh_h", "speed_kmh")]
    await _write(database_url, rows)
    start = (t0 - timedelta(minutes=1)).isoformat()
    whole = await api.get("/api/telemetry", params={"device_id": dev, "start": start})
    assert len(whole.json()) == 1000 and "x-truncated" not in whole.headers

    got, pages = await _pages(api, {"device_id": dev, "start": start, "limit": "300"})
    assert pages == 4 and len(got) == 1000
    assert [(p["ts"], p["metric"]) for p in got] == [(p["ts"], p["metric"]) for p in whole.json()]

    buckets, pages = await _pages(api, {"device_id": dev, "start": start, "bucket": "1m", "limit": "70"})
    assert pages > 1 and sum(b["count"] for b in buckets) == 1000  # type: ignore[misc]
    assert len({(b["bucket"], b["metric"]) for b in buckets}) == len(buckets)

    bad = await api.get("/api/telemetry", params={"device_id": dev, "cursor": "not-ours"})
    assert bad.status_code == 422


async def test_buckets_come_from_the_rollups_and_match_the_raw_rows(api: httpx.AsyncClient,
                                                                   database_url: str) -> None:
    dev = unique_id("TR")
    now = datetime.now(UTC).replace(microsecond=0)
    t0 = now - timedelta(hours=6)
    await _write(database_url, [(t0 + timedelta(minutes=i), dev, "speed_kmh", float(i % 37), None)
                                for i in range(6 * 60)])
    conn = await asyncpg.connect(database_url)
    try:
        await refresh_recent(conn, Backend.POSTGRES, now, timedelta(hours=3))
        done = await complete_before(conn)
        assert done is not None and done <= now
        # written after the refresh: read from the raw rows past the watermark
        await _write(database_url, [(now - timedelta(seconds=20), dev, "speed_kmh", 99.0, None)])
        for width, source in (("15m", "5m"), ("2h", "1h"), ("90s", "raw")):
            r = await api.get("/api/telemetry", params={"device_id": dev, "bucket": width,
                                                        "start": t0.isoformat(), "end": now.isoformat()})
            assert r.status_code == 200 and r.headers["x-telemetry-source"] == source
            body = r.json()
            assert sum(b["count"] for b in body) == 6 * 60 + 1, width
            assert max(b["max"] for b in body) == 99.0
            raw = await queries.bucketed_points(conn, Backend.POSTGRES, dev, None, t0, now,
                                                parse_bucket(width), 10_000, queries.Source.RAW)
            assert [(b["count"], round(b["avg"], 9)) for b in body] == [(b["count"], round(b["avg"], 9)) for b in raw]
    finally:
        await conn.close()


async def test_ranges_past_what_is_kept_are_refused(api: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)

    async def ask(days_back: int, days: int, bucket: str | None) -> httpx.Response:
        params = {"device_id": "nobody", "start": (now - timedelta(days=days_back)).isoformat(),
                  "end": (now - timedelta(days=days_back - days)).isoformat()}
        return await api.get("/api/telemetry", params=params | ({"bucket": bucket} if bucket else {}))

    r = await ask(100, 1, None)
    assert r.status_code == 422 and "kept 90 days" in r.json()["detail"]
    r = await ask(100, 10, "7m")
    assert r.status_code == 422 and "5 minutes reaches 400 days" in r.json()["detail"]
    assert (await ask(100, 10, "5m")).status_code == 200
    r = await ask(500, 10, "15m")
    assert r.status_code == 422 and "hours reaches 1830 days" in r.json()["detail"]
    assert (await ask(500, 100, "1h")).status_code == 200
    assert (await ask(365, 365, "1d")).headers["x-telemetry-source"] == "1h"


async def test_openapi_declares_the_paging_headers(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    try:  # schemathesis is in the bench extra (benchmarks.api_fuzz); where installed, it must load the whole spec
        import schemathesis
    except ImportError:
        pass
    else:
        operations = [op.ok() for op in schemathesis.openapi.from_dict(spec).get_all_operations()]  # type: ignore[union-attr]  # raises if invalid
        assert any(o.path == "/api/telemetry" for o in operations)
    op = spec["paths"]["/api/telemetry"]["get"]
    assert {"X-Truncated", "Link", "X-Next-Cursor"} <= set(op["responses"]["200"]["headers"])
    assert "cursor" in {p["name"] for p in op["parameters"]}
