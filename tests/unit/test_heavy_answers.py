"""ioc/api/heavy.py: rows encoded as their response model would be; large answers a few at a time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import HTTPException
from pydantic import TypeAdapter

from ioc.api import heavy
from ioc.api.models import TelemetryBucket, TelemetryPoint

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 6, 23, 0, 0, 123456, tzinfo=UTC)


@pytest.mark.parametrize(("model", "rows"), [
    (TelemetryPoint, [{"ts": T0, "metric": "m", "value": 1.5, "seq": 7},
                      {"ts": T0.replace(microsecond=0), "metric": "m", "value": float("nan"), "seq": None},
                      {"ts": T0 + timedelta(seconds=1), "metric": "é", "value": float("inf"), "seq": 2**40}]),
    (TelemetryBucket, [{"bucket": T0, "metric": "m", "avg": 2.0, "min": -1e308, "max": 1e-300,
                        "count": Decimal(12)}]),
])
def test_rows_encode_as_their_model_would(model: type, rows: list[dict[str, Any]]) -> None:
    adapter = TypeAdapter(list[model])  # type: ignore[valid-type]
    assert heavy.encode_rows(rows) == adapter.dump_json(adapter.validate_python(rows))


def _request(name: str) -> Any:
    return SimpleNamespace(scope={}, client=SimpleNamespace(host=name))


async def test_slots_per_caller_and_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heavy, "AT_ONCE", 1)
    monkeypatch.setattr(heavy, "PER_CALLER", 2)
    monkeypatch.setattr(heavy, "WAITING", 2)
    release = asyncio.Event()
    running: list[str] = []

    async def answer(who: str) -> str:
        try:
            async with heavy.heavy_slot(_request(who), 5000):
                running.append(who)
                await release.wait()
            return "ok"
        except HTTPException as err:
            assert err.headers and err.headers["Retry-After"]
            return str(err.status_code)

    first = [asyncio.create_task(answer(w)) for w in ("a", "a", "a")]
    await asyncio.sleep(0.01)
    assert running == ["a"] and first[2].done() and first[2].result() == "429"  # a third of one caller's
    others = [asyncio.create_task(answer(w)) for w in ("b", "c")]
    await asyncio.sleep(0.01)
    assert others[1].done() and others[1].result() == "503"  # two wait already
    release.set()
    assert await asyncio.gather(*first[:2], others[0]) == ["ok", "ok", "ok"]
    assert running == ["a", "a", "b"] and not heavy._gate().by_caller  # all given back
