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


def _app_request(name: str, **settings: Any) -> Any:
    from ioc.auth.config import AuthConfig

    app = SimpleNamespace(state=SimpleNamespace(auth=SimpleNamespace(config=AuthConfig(**settings))))
    return SimpleNamespace(scope={}, client=SimpleNamespace(host=name), app=app)


def test_the_defaults_are_the_settings_defaults() -> None:
    limits = heavy.limits_of(_app_request("a"))
    assert limits == heavy.Limits(heavy.AT_ONCE, heavy.PER_CALLER, heavy.WAITING, heavy.LARGE_ROWS) == \
        heavy.Limits(2, 8, 64, 1000)


async def test_slots_follow_the_apps_settings() -> None:
    """IOC_AUTH__HEAVY_*: 1 slot, 1 per caller, answers of more than 10 rows."""
    settings = {"heavy_at_once": 1, "heavy_per_caller": 1, "heavy_waiting": 5, "heavy_large_rows": 10}
    release = asyncio.Event()

    async def answer(who: str, rows: int) -> str:
        try:
            async with heavy.heavy_slot(_app_request(who, **settings), rows):
                await release.wait()
            return "ok"
        except HTTPException as err:
            return str(err.status_code)

    small = asyncio.create_task(answer("a", 10))  # not large: no slot
    first = asyncio.create_task(answer("a", 11))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(answer("a", 11))  # a second of one caller's: 429
    other = asyncio.create_task(answer("b", 11))  # waits for the one slot
    await asyncio.sleep(0.01)
    assert second.done() and second.result() == "429" and not other.done()
    assert heavy._gate(1).waiting == 1
    release.set()
    assert await asyncio.gather(small, first, other) == ["ok", "ok", "ok"]
