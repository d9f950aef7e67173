"""Read endpoints the screens need beyond the core API: UI settings, a device's status timeline and
alarms, and city KPI history for the wall's sparklines."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response

from ioc.api.deps import BackendDep, PoolDep, Role, requires
from ioc.api.heavy import ANY_ROWS, heavy_slot, json_model
from ioc.api.models import ApiTime
from ioc.settings import Settings
from storage import queries

logger = logging.getLogger(__name__)

Limit = Annotated[int, Query(ge=1, le=10_000)]
_KPI_CACHE_S = 60.0  # every wall asks once at load; a room of screens reloading at once costs one query


def router_for(settings: Settings) -> APIRouter:
    """The router, bound to the settings the screens are configured from."""
    router = APIRouter(tags=["screens"])
    lang, timezone = settings.ui.lang, settings.ui.timezone
    kpi_cache: dict[tuple[int, int], tuple[float, list[dict[str, Any]]]] = {}

    @router.get("/api/ui/config", dependencies=[requires(Role.VIEWER)])
    async def ui_config(request: Request) -> dict[str, Any]:
        """Language and time zone of the screens (a page's ``?lang=`` / ``?tz=`` override them)."""
        return {"lang": lang, "timezone": timezone, "city": request.app.state.city.name,
                "alerts": settings.alerts.enabled}  # the deployment's, not this replica's (the brain may run elsewhere)

    @router.get("/api/devices/{device_id}/status", dependencies=[requires(Role.VIEWER)],
                response_model=list[dict[str, Any]])
    async def status_history(request: Request, pool: PoolDep, device_id: str, start: ApiTime | None = None,
                             end: ApiTime | None = None, limit: Limit = 2000) -> Response:
        """States the device reported in ``[start, end)`` (default: the last 24 h), oldest first; the first
        row may be older than ``start``: it is the state in force when the window opens."""
        start, end = _window(start, end, timedelta(hours=24))
        async with heavy_slot(request, limit):  # large answers a few at a time, built off the event loop
            async with pool.acquire() as conn:
                rows = await queries.status_history(conn, device_id, start, end, limit)
            return await json_model(rows, ANY_ROWS)

    @router.get("/api/devices/{device_id}/events", dependencies=[requires(Role.VIEWER)],
                response_model=list[dict[str, Any]])
    async def device_events(request: Request, pool: PoolDep, device_id: str, start: ApiTime | None = None,
                            end: ApiTime | None = None, limit: Limit = 200) -> Response:
        """Alarms the device sent itself in ``[start, end)`` (default: the last 24 h), newest first."""
        start, end = _window(start, end, timedelta(hours=24))
        async with heavy_slot(request, limit):
            async with pool.acquire() as conn:
                rows = await queries.device_events(conn, device_id, start, end, limit)
            for row in rows:
                if isinstance(row["detail"], str):
                    row["detail"] = orjson.loads(row["detail"])
            return await json_model(rows, ANY_ROWS)

    @router.get("/api/ui/kpis", dependencies=[requires(Role.VIEWER)])
    async def kpi_history(pool: PoolDep, backend: BackendDep, hours: Annotated[int, Query(ge=1, le=12)] = 4,
                          bucket_min: Annotated[int, Query(ge=1, le=60)] = 5) -> list[dict[str, Any]]:
        """City KPIs per bucket over the last ``hours``: mean traffic speed, % of BTS and cameras reporting,
        live incidents. Backfills the wall's sparklines; the wall extends them from the live feed."""
        key = (hours, bucket_min)
        hit = kpi_cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < _KPI_CACHE_S:
            return hit[1]
        end = datetime.now(UTC)
        start, width = end - timedelta(hours=hours), timedelta(minutes=bucket_min)
        async with pool.acquire() as conn:
            rows = await queries.kpi_history(conn, backend, start, end, width)
            spans = await queries.incident_spans(conn, start, end)
        out = []
        for row in rows:
            at = row["bucket"] + width  # the figure as it stood at the end of the bucket
            live = sum(1 for s in spans if s["started_at"] <= at and (s["ended_at"] is None or s["ended_at"] > at))
            out.append({"t": row["bucket"], "speed": row["speed"], "incidents": live,
                        "bts": _pct(row["bts_reporting"], row["bts_total"]),
                        "cam": _pct(row["cam_reporting"], row["cam_total"])})
        kpi_cache.clear()  # one entry is all the screens use; never let odd parameters pile up
        kpi_cache[key] = (time.monotonic(), out)
        return out

    return router


def _pct(part: int, total: int) -> float | None:
    return min(100.0, 100.0 * part / total) if total else None


def _window(start: datetime | None, end: datetime | None, default: timedelta) -> tuple[datetime, datetime]:
    end = _aware(end) if end else datetime.now(UTC)
    start = _aware(start) if start else end - default
    if start >= end:
        raise HTTPException(422, "start must be before end")
    return start, end


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
