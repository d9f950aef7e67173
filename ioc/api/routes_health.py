"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ioc.api.deps import PoolDep, Role, connection_principal, requires
from ioc.api.heavy import ANY_ROWS, heavy_slot, json_model
from ioc.health import pipeline_problems
from storage.db import SchemaNotReady, read_backend
from storage.set_aside import list_set_aside

router = APIRouter(tags=["health"])


@router.get("/healthz", dependencies=[requires(Role.PUBLIC)])
async def healthz() -> dict[str, str]:
    """The process is alive (it does not check dependencies; see /readyz)."""
    return {"status": "ok"}


@router.get("/readyz", dependencies=[requires(Role.PUBLIC)])
async def readyz(request: Request) -> JSONResponse:
    """Ready to serve: the database answers and is migrated (and the embedded ingest, if any, runs).

    Anyone gets ``{"status": "ready"}`` (200) or ``{"status": "not ready"}`` (503): what a load balancer or a
    probe needs. What is wrong (``checks``, ``problems``: database errors, broker state, stalled stages) is for
    signed-in viewers and above (a session, an API token such as a monitoring system's viewer token, OIDC): it
    tells an outsider how the system is built and when it is weak."""
    checks: dict[str, str] = {}
    pool = request.app.state.pool
    try:
        async with pool.acquire(timeout=2) as conn:
            checks["database"] = (await read_backend(conn)).value
    except SchemaNotReady:
        checks["database"] = "schema missing: run `ioc db upgrade`"
    except Exception as err:
        checks["database"] = f"unreachable: {type(err).__name__}"
    worker = request.app.state.worker
    if worker is not None:
        checks["mqtt"] = "connected" if worker.session.is_connected else "disconnected"
    # Progress, not only sockets: messages waiting and not committed, change sets not stored, a dead shard.
    problems = pipeline_problems(request.app.state)
    ok = (checks["database"] in ("timescaledb", "postgres") and checks.get("mqtt", "connected") == "connected"
          and not problems)
    body: dict[str, Any] = {"status": "ready" if ok else "not ready"}
    me = connection_principal(request)  # identified by the route's role check; None if anonymous or refused
    if me is not None and me.role >= Role.VIEWER:
        body.update(checks=checks, problems=problems)
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/api/set-aside", dependencies=[requires(Role.ADMIN)], response_model=list[dict[str, Any]])
async def set_aside_list(request: Request, pool: PoolDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                         stage: str | None = None) -> Response:
    """Change sets a stage could not store because the data was refused (never retried in front of the rest),
    with the error and the refused piece as JSON text. Admins only: pieces may hold personal data."""
    async with heavy_slot(request, limit):  # pieces may be large: with a low IOC_AUTH__HEAVY_LARGE_ROWS, in turn
        async with pool.acquire() as conn:
            rows = await list_set_aside(conn, limit, stage)
        return await json_model(rows, ANY_ROWS)


@router.get("/metrics", dependencies=[requires(Role.VIEWER)], response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    """Prometheus metrics of this process (ingest counters included when ingest runs here). Scrapers use a
    viewer token; ``IOC_AUTH__METRICS=false`` turns the route off."""
    if not request.app.state.auth.config.metrics:
        raise HTTPException(404, "metrics are off (IOC_AUTH__METRICS=false)")
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
