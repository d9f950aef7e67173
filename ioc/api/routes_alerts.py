"""Alerts and incidents for duty officers: lists, details with history, actions, silences, roster, policies."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ioc.alerts import escalation
from ioc.alerts.model import Severity
from ioc.alerts.silences import validate_matchers
from ioc.alerts.stage import AlertStage
from ioc.api.deps import CurrentPrincipal, PoolDep, Principal, Role, requires
from ioc.api.heavy import ANY_ROWS, heavy_slot, json_model
from ioc.api.models import ApiTime
from ioc.cluster import actions
from ioc.cluster.views import incident_views
from storage import alerts as store
from storage import cluster as cluster_sql
from storage import notifications as outbox

logger = logging.getLogger(__name__)
router = APIRouter(tags=["alerts"])

StateFilter = Annotated[list[str] | None, Query(description="open, acknowledged, resolved, closed")]
SeverityFilter = Annotated[list[str] | None, Query(description="critical, major, minor, warning, info")]
Limit = Annotated[int, Query(ge=1, le=5000)]


class ActionRequest(BaseModel):
    """An officer's action, over REST or the WebSocket. The actor is the authenticated caller."""

    model_config = ConfigDict(extra="forbid")

    actor: str | None = Field(None, max_length=64, description="ignored (kept so older clients still validate): "
                              "the audit trail names the authenticated caller")
    note: str | None = Field(None, max_length=2000)
    assignee: str | None = Field(None, max_length=64, description="for assign: the officer (null = unassign)")


class SilenceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    matchers: dict[str, str] = Field(description="any of device_id, district, kind, rule, category; all must match")
    starts_at: ApiTime | None = Field(None, description="default now")
    ends_at: ApiTime
    reason: str = Field(min_length=1, max_length=500)
    author: str | None = Field(None, max_length=64, description="ignored: the author is the authenticated caller")


class SilenceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ends_at: ApiTime | None = None
    reason: str | None = Field(None, min_length=1, max_length=500)


class OfficerPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(None, max_length=40)
    active: bool = True


class ShiftCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    officer_id: str
    level: int = Field(1, ge=1, le=9)
    starts_at: ApiTime
    ends_at: ApiTime


class PolicyPut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    min_severity: Severity
    steps: list[dict[str, float]] = Field(description='[{"after_min": 0, "level": 1}, {"after_min": 10, "level": 2}]')
    repeat: int = Field(0, ge=0, le=100)
    channels: list[str] = Field(default_factory=lambda: ["email", "webhook"])


def _district_name(request: Request) -> Callable[[str | None], str | None]:
    city = request.app.state.city

    def name(code: str | None) -> str | None:
        district = city.get(code) if code else None
        return district.name if district else code

    return name


def _stage(request: Request) -> AlertStage:
    stage: AlertStage | None = request.app.state.alerts
    if stage is None:
        raise HTTPException(503, "the alert engine is not running in this process (IOC_ALERTS__ENABLED=false)")
    return stage


def _check_silence_length(request: Request, me: Principal, starts: datetime, ends: datetime) -> None:
    limit_h = request.app.state.auth.config.officer_silence_max_h
    if me.role < Role.SUPERVISOR and (ends - max(starts, datetime.now(UTC))).total_seconds() > limit_h * 3600:
        raise HTTPException(403, f"officers may silence for at most {limit_h:g} h; ask a supervisor")


async def _reload(request: Request) -> None:
    if request.app.state.alerts is not None:
        await request.app.state.alerts.reload_config()
    else:  # the leader runs elsewhere: tell it (ioc/cluster/actions.py re-reads at once)
        async with request.app.state.pool.acquire() as conn:
            await cluster_sql.notify(conn, cluster_sql.CHANNEL_CONFIG, {"origin": request.app.state.process_id})


# --- incidents and alerts ------------------------------------------------------------------------------

@router.get("/api/incidents", dependencies=[requires(Role.VIEWER)], response_model=list[dict[str, Any]])
async def list_incidents(request: Request, pool: PoolDep, state: StateFilter = None,
                         severity: SeverityFilter = None, category: str | None = None, district: str | None = None,
                         since: ApiTime | None = None, limit: Limit = 100) -> Response:
    """Incidents, newest first (filter by state, severity, category, district, start time)."""
    async with heavy_slot(request, limit):  # large answers a few at a time, built off the event loop
        async with pool.acquire() as conn:
            rows = await store.list_incidents(conn, state=state, severity=severity, category=category,
                                              district=district, since=since, limit=limit)
        return await json_model(rows, ANY_ROWS)


@router.get("/api/incidents/live", dependencies=[requires(Role.VIEWER)])
async def live_incidents(request: Request, pool: PoolDep) -> list[dict[str, Any]]:
    """Open and acknowledged incidents with their members, most severe first (what the wall shows).

    Read from the database like every other incident route, on any replica (one truth)."""
    async with pool.acquire() as conn:
        return await incident_views(conn, _district_name(request))


@router.get("/api/incidents/{incident_id}", dependencies=[requires(Role.VIEWER)])
async def get_incident(request: Request, pool: PoolDep, incident_id: int) -> dict[str, Any]:
    """One incident with its alerts (evidence included), its members and devices as the live views show them,
    and its full history."""
    async with pool.acquire() as conn:
        inc = await store.get_incident(conn, incident_id)
        views = await incident_views(conn, _district_name(request), [incident_id]) if inc is not None else []
    if inc is None:
        raise HTTPException(404, f"no incident {incident_id}")
    if views:
        inc.update({k: views[0][k] for k in ("members", "devices", "district_name", "member_count")})
    return inc


@router.post("/api/incidents/{incident_id}/{action}")
async def act_on_incident(request: Request, incident_id: int, action: str, body: ActionRequest,
                          me: Annotated[Principal, requires(Role.OFFICER)]) -> dict[str, Any]:
    """``ack``, ``assign``, ``comment``, ``resolve`` or ``close`` an incident; returns it as it now is."""
    if action not in ("ack", "assign", "comment", "resolve", "close"):
        raise HTTPException(404, f"unknown action {action!r}; use ack, assign, comment, resolve or close")
    if action == "comment" and not body.note:
        raise HTTPException(422, "a comment needs a note")
    # Applied by the leader, wherever it runs (this process, or another through the database: ioc/cluster).
    try:
        return await actions.apply(request.app.state, action, incident_id, me.name, body.note, body.assignee)
    except actions.ActionFailed as err:
        raise HTTPException(err.status, str(err)) from None


@router.get("/api/alerts", dependencies=[requires(Role.VIEWER)], response_model=list[dict[str, Any]])
async def list_alerts(request: Request, pool: PoolDep, state: StateFilter = None, severity: SeverityFilter = None,
                      device_id: str | None = None, district: str | None = None, rule: str | None = None,
                      incident_id: int | None = None, since: ApiTime | None = None,
                      limit: Limit = 100) -> Response:
    """Alerts, newest first."""
    async with heavy_slot(request, limit):
        async with pool.acquire() as conn:
            rows = await store.list_alerts(conn, state=state, severity=severity, device_id=device_id,
                                           district=district, rule=rule, incident_id=incident_id, since=since,
                                           limit=limit)
        return await json_model(rows, ANY_ROWS)


@router.get("/api/alerts/{alert_id}", dependencies=[requires(Role.VIEWER)])
async def get_alert(pool: PoolDep, alert_id: int) -> dict[str, Any]:
    """One alert with its history."""
    async with pool.acquire() as conn:
        alert = await store.get_alert(conn, alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}")
    return alert


@router.get("/api/notifications", dependencies=[requires(Role.OFFICER)], response_model=list[dict[str, Any]])
async def list_notifications(request: Request, pool: PoolDep, status: str | None = None,
                             incident_id: int | None = None, limit: Limit = 100) -> Response:
    """The notification outbox: what was sent, what is waiting, what failed and why."""
    async with heavy_slot(request, limit):
        async with pool.acquire() as conn:
            rows = await outbox.list_notifications(conn, limit, status=status, incident_id=incident_id)
        return await json_model(rows, ANY_ROWS)


# --- silences ------------------------------------------------------------------------------------------

@router.get("/api/silences", dependencies=[requires(Role.VIEWER)])
async def list_silences(pool: PoolDep, include_expired: bool = False) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return await store.list_silences(conn, include_expired)


@router.post("/api/silences", status_code=201)
async def create_silence(request: Request, pool: PoolDep, body: SilenceCreate,
                         me: Annotated[Principal, requires(Role.OFFICER)]) -> dict[str, Any]:
    """Quiet matching alerts for a maintenance window (alerts are still recorded, nobody is paged). Officers
    may silence for at most ``IOC_AUTH__OFFICER_SILENCE_MAX_H``; supervisors and admins for longer."""
    try:
        matchers = validate_matchers(body.matchers)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    starts = body.starts_at or datetime.now(UTC)
    if body.ends_at <= starts:
        raise HTTPException(422, "ends_at must be after starts_at")
    _check_silence_length(request, me, starts, body.ends_at)
    async with pool.acquire() as conn:
        row = await store.create_silence(conn, matchers, starts, body.ends_at, body.reason, me.name)
    await _reload(request)
    return row


@router.patch("/api/silences/{silence_id}")
async def update_silence(request: Request, pool: PoolDep, silence_id: int, body: SilenceUpdate,
                         me: Annotated[Principal, requires(Role.OFFICER)]) -> dict[str, str]:
    if body.ends_at is not None:
        _check_silence_length(request, me, datetime.now(UTC), body.ends_at)
    async with pool.acquire() as conn:
        if not await store.update_silence(conn, silence_id, body.ends_at, body.reason):
            raise HTTPException(404, f"no active silence {silence_id}")
    await _reload(request)
    return {"status": "updated"}


@router.delete("/api/silences/{silence_id}", dependencies=[requires(Role.OFFICER)])
async def delete_silence(request: Request, pool: PoolDep, silence_id: int) -> dict[str, str]:
    async with pool.acquire() as conn:
        if not await store.delete_silence(conn, silence_id):
            raise HTTPException(404, f"no active silence {silence_id}")
    await _reload(request)
    return {"status": "deleted"}


# --- roster and escalation policies ---------------------------------------------------------------------

@router.get("/api/officers", dependencies=[requires(Role.VIEWER)])
async def list_officers(pool: PoolDep, me: CurrentPrincipal) -> list[dict[str, Any]]:
    """The roster's officers; e-mail and phone only for officers and above (a wall's viewer sees names)."""
    async with pool.acquire() as conn:
        rows = await store.list_officers(conn)
    if me is None or me.role < Role.OFFICER:
        rows = [{k: v for k, v in r.items() if k not in ("email", "phone")} for r in rows]
    return rows


@router.put("/api/officers/{officer_id}", dependencies=[requires(Role.SUPERVISOR)])
async def put_officer(request: Request, pool: PoolDep, officer_id: str, body: OfficerPut) -> dict[str, Any]:
    async with pool.acquire() as conn:
        await store.upsert_officer(conn, {"id": officer_id, **body.model_dump()})
    await _reload(request)
    return {"id": officer_id, **body.model_dump()}


@router.delete("/api/officers/{officer_id}", dependencies=[requires(Role.SUPERVISOR)])
async def delete_officer(request: Request, pool: PoolDep, officer_id: str) -> dict[str, str]:
    async with pool.acquire() as conn:
        if not await store.delete_officer(conn, officer_id):
            raise HTTPException(404, f"no officer {officer_id!r}")
    await _reload(request)
    return {"status": "deleted"}


@router.get("/api/shifts", dependencies=[requires(Role.VIEWER)])
async def list_shifts(pool: PoolDep, since: ApiTime | None = None) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        return await store.list_shifts(conn, since)


@router.post("/api/shifts", status_code=201, dependencies=[requires(Role.SUPERVISOR)])
async def create_shift(request: Request, pool: PoolDep, body: ShiftCreate) -> dict[str, Any]:
    if body.ends_at <= body.starts_at:
        raise HTTPException(422, "ends_at must be after starts_at")
    async with pool.acquire() as conn:
        if not any(o["id"] == body.officer_id for o in await store.list_officers(conn)):
            raise HTTPException(422, f"no officer {body.officer_id!r}")
        row = await store.create_shift(conn, body.officer_id, body.level, body.starts_at, body.ends_at)
    await _reload(request)
    return row


@router.delete("/api/shifts/{shift_id}", dependencies=[requires(Role.SUPERVISOR)])
async def delete_shift(request: Request, pool: PoolDep, shift_id: int) -> dict[str, str]:
    async with pool.acquire() as conn:
        if not await store.delete_shift(conn, shift_id):
            raise HTTPException(404, f"no shift {shift_id}")
    await _reload(request)
    return {"status": "deleted"}


@router.get("/api/oncall", dependencies=[requires(Role.VIEWER)])
async def on_call(pool: PoolDep, at: ApiTime | None = None) -> dict[str, list[str]]:
    """Who is paged at each level right now (or at ``at``); read from the roster, on any replica."""
    when = at or datetime.now(UTC)
    async with pool.acquire() as conn:
        shifts = [escalation.Shift(**s) for s in await store.list_shifts(conn, since=when)]
    levels = sorted({s.level for s in shifts}) or [1]
    return {str(level): escalation.on_duty(shifts, level, when) for level in levels}


@router.get("/api/policies", dependencies=[requires(Role.VIEWER)])
async def list_policies(pool: PoolDep) -> list[dict[str, Any]]:
    async with pool.acquire() as conn:
        rows = await store.list_policies(conn)
    return rows or [escalation.DEFAULT_POLICY.to_dict() | {"builtin": True}]


@router.put("/api/policies/{policy_id}", dependencies=[requires(Role.SUPERVISOR)])
async def put_policy(request: Request, pool: PoolDep, policy_id: str, body: PolicyPut) -> dict[str, Any]:
    try:
        steps = escalation.validate_steps(body.steps)
    except (ValueError, TypeError) as err:
        raise HTTPException(422, str(err)) from None
    unknown = set(body.channels) - {"email", "webhook"}
    if unknown:
        raise HTTPException(422, f"unknown channels {sorted(unknown)}; use email, webhook")
    doc = {"id": policy_id, **body.model_dump(mode="json"), "steps": steps}
    async with pool.acquire() as conn:
        await store.upsert_policy(conn, doc)
    await _reload(request)
    return doc


@router.delete("/api/policies/{policy_id}", dependencies=[requires(Role.SUPERVISOR)])
async def delete_policy(request: Request, pool: PoolDep, policy_id: str) -> dict[str, str]:
    async with pool.acquire() as conn:
        if not await store.delete_policy(conn, policy_id):
            raise HTTPException(404, f"no policy {policy_id!r}")
    await _reload(request)
    return {"status": "deleted"}
