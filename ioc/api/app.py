"""The FastAPI app factory and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ingest.records import ParsedMessage
from ioc import health
from ioc.api import (
    hardening,
    routes_alerts,
    routes_auth,
    routes_cluster,
    routes_devices,
    routes_health,
    routes_live,
    routes_mfa,
    routes_sso,
    routes_ui,
    routes_wall,
)
from ioc.api.deps import require_access
from ioc.api.edge import check_request_text
from ioc.api.errors import COMMON_RESPONSES, widen_validation_error
from ioc.api.redact import install_log_filter
from ioc.auth.service import Authenticator
from ioc.cluster.node import Node, Role
from ioc.geo import City
from ioc.live.hub import LiveHub
from ioc.live.registry_sync import sync_registry
from ioc.live.source import LiveListener
from ioc.settings import Settings
from storage import queries
from storage.db import create_pool

logger = logging.getLogger(__name__)


def create_app(settings: Settings, embed_ingest: bool = False, role: Role = "all") -> FastAPI:
    """Build the app. With ``embed_ingest`` an ingest worker runs inside the same process. ``role``: ``api``
    (REST, WebSocket, pages), ``brain`` (the stateful stages while holding the lease) or ``all`` (both)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # min_size=0: the API starts (and /healthz answers) even while the database is down.
        app.state.pool = await create_pool(settings.database_url, settings.storage, min_size=0)
        app.state.backend = None
        app.state.storage = settings.storage  # retention windows: /api/telemetry says when a range is past them
        app.state.worker = None
        app.state.city = City.load(settings.live.city_file)
        hub = app.state.hub = LiveHub(app.state.city.district_of, settings.live.ring_size,
                                      settings.live.client_queue, settings.live.heartbeat_s,
                                      settings.live.batch_ms / 1000)
        hub.snapshot_incidents, hub.incident_members = settings.live.snapshot_incidents, settings.live.incident_members
        await _seed_hub(app, settings)
        app.state.listener = None
        tasks = [asyncio.create_task(hub.heartbeat_loop(), name="live-heartbeat"),
                 asyncio.create_task(sync_registry(hub, app.state.pool, settings.live.registry_sync_s),
                                     name="registry-sync")]
        # The stateful stages (analytics, alerts, notifications) run in the brain, only while it holds the lease
        # (ioc/cluster, docs/ha.md); it sets app.state.analytics / app.state.alerts while it leads.
        app.state.analytics = app.state.alerts = None
        node = Node(app.state, settings, role, embedded_ingest=embed_ingest)
        # node.on_parsed measures this replica's own input lag (GET /api/cluster)
        sinks: tuple[Callable[[ParsedMessage], None], ...] = (hub.on_parsed, node.on_parsed)
        if embed_ingest and node.brain is not None:
            sinks = (hub.on_parsed, node.on_parsed, node.brain.on_parsed)
        await node.start()
        listener = None
        if embed_ingest:
            from ioc.services import build_worker

            app.state.worker = build_worker(settings, sinks=sinks)
            app.state.worker.gate = node.ingest_gate  # acks after the brain's stages stored (as its own session's)
            worker_task = asyncio.create_task(app.state.worker.run(), name="embedded-ingest")
        elif settings.live.listen_mqtt and role != "brain":
            listener = app.state.listener = LiveListener(settings, sinks, late_sinks=(hub.on_parsed_late,))
            tasks.append(asyncio.create_task(listener.kinds.run(app.state.pool), name="live-kinds"))
            tasks.append(asyncio.create_task(listener.run(), name="live-mqtt"))
        tasks.append(asyncio.create_task(health.watch(app.state), name="health"))
        try:
            yield
        finally:
            if app.state.worker is not None:
                app.state.worker.stop()
                await asyncio.wait_for(worker_task, 15)
            if listener is not None:
                await listener.stop()
            await node.stop()  # a leader flushes, saves and releases the lease
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await app.state.pool.close()

    app = FastAPI(title="IOC realtime monitor", version="0.1.0", lifespan=lifespan,
                  description="Smart-city Intelligent Operations Center: devices, telemetry, quarantine, live feed, "
                              "alerts and incidents.",
                  docs_url=None, redoc_url=None, openapi_url=None,  # served behind a role: IOC_AUTH__DOCS
                  dependencies=[Depends(require_access), Depends(check_request_text)],
                  responses=COMMON_RESPONSES)
    widen_validation_error(app)
    install_log_filter()  # wall links and feeds carry ?token=: uvicorn would log it with every request line
    # rate limits counted in PostgreSQL across replicas (the pool exists once the lifespan has started)
    app.state.auth = Authenticator(settings.auth, pool_of=lambda: getattr(app.state, "pool", None))
    hardening.install(app, settings.auth)
    app.include_router(routes_health.router)
    app.include_router(routes_auth.router)
    app.include_router(routes_sso.router)
    app.include_router(routes_mfa.router)
    app.include_router(routes_devices.router)
    app.include_router(routes_live.router)
    app.include_router(routes_alerts.router)
    app.include_router(routes_cluster.router)
    app.include_router(routes_ui.router_for(settings))
    app.include_router(routes_wall.router)

    @app.exception_handler(OSError)
    @app.exception_handler(asyncpg.InterfaceError)
    @app.exception_handler(asyncpg.CannotConnectNowError)
    async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        logger.warning("database unavailable: %s", exc)
        return JSONResponse({"detail": f"database unavailable: {type(exc).__name__}"}, status_code=503)

    @app.exception_handler(asyncpg.UndefinedTableError)
    async def schema_missing(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": "database schema missing; run `ioc db upgrade`"}, status_code=503)

    @app.exception_handler(asyncpg.DataError)
    async def value_out_of_range(request: Request, exc: Exception) -> JSONResponse:
        # a request value the database cannot hold (an id past 64 bits: /api/incidents/99999999999999999999)
        # is the caller's error, for every route at once (found by benchmarks.api_fuzz)
        return JSONResponse({"detail": f"invalid value: {exc}"[:300]}, status_code=422)

    @app.exception_handler(asyncpg.IntegrityConstraintViolationError)
    async def breaks_a_rule(request: Request, exc: Exception) -> JSONResponse:
        # a request that breaks a rule of the stored data (a silence PATCHed to end before it starts: the table's
        # CHECK) is the caller's error, for every route at once (found by api_fuzz's hostile values)
        status = 409 if isinstance(exc, asyncpg.UniqueViolationError | asyncpg.ForeignKeyViolationError) else 422
        return JSONResponse({"detail": f"refused by the stored data's rules: {exc}"[:300]}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI echoes each refused input; one holding NaN or Infinity (the stdlib parser takes them) cannot be
        # written back as JSON and the 422 became a 500: then the errors go back without their inputs
        try:
            return await request_validation_exception_handler(request, exc)
        except ValueError:
            errors = [{k: v for k, v in e.items() if k not in ("input", "ctx")} for e in exc.errors()]
            return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(OverflowError)
    async def arithmetic_out_of_range(request: Request, exc: Exception) -> JSONResponse:
        # a request value that overflows once computed with (a time near year 1 or 9999 shifted by a default
        # window, a count of hours past a timedelta): the caller's error, never a 500 (found by H4's probes)
        logger.info("request value out of range on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": f"a value in the request is out of range: {exc}"[:300]}, status_code=422)

    return app


async def _seed_hub(app: FastAPI, settings: Settings) -> None:
    """Load the registry and recent latest values so the first snapshot matches the database."""
    since = datetime.now(UTC) - timedelta(minutes=settings.live.initial_window_min)
    try:
        async with app.state.pool.acquire(timeout=5) as conn:
            devices = await queries.list_devices(conn, limit=10_000_000)
            latest = await queries.recent_latest_values(conn, since)
    except Exception as err:  # the feed still works from live data; the snapshot is just thinner
        logger.warning("live state not seeded from the database: %s", err)
        return
    app.state.hub.load_devices(devices, latest)
    logger.info("live state seeded: %d devices, %d latest values", len(devices), len(latest))
