"""Alerts and incidents for duty officers: lists, details with history, actions, silences, roster, policies."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from ioc.alerts import escalation
from ioc.alerts.model import Severity
from ioc.alerts.silences import validate_matchers
from ioc.alerts.stage import AlertStage
from ioc.api.deps import CurrentPrincipal, PoolDep, Principal, Role, requires
from ioc.api.heavy import ANY_DOC, ANY_ROWS, heavy_slot, json_model
from ioc.api.models import ApiTime
from ioc.api.redact import redact_urls, site_of
from ioc.cluster import actions, views
from storage import alerts as store
from storage import cluster as cluster_sql
from storage import notifications as outbox

logger = logging.getLogger(__name__)
router = APIRouter(tags=["alerts"])

StateFilter = Annotated[list[str] | None, Query(description="open, acknowledged, resolved, closed")]
SeverityFilter = Annotated[list[str] | None, Query(description="critical, major, minor, warning, info")]
Limit = Annotated[int, Query(ge=1, le=5000)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
#: Members shown per incident of a list; with ``limit`` at most ``_MAX_LISTED_MEMBERS`` in one answer.
MembersLimit = Annotated[int, Query(ge=0, le=1000, description="members and devices shown per incident")]
DetailLimit = Annotated[int, Query(ge=0, le=5000)]
LiveStateFilter = Annotated[list[Literal["open", "acknowledged"]] | None, Query(description="open, acknowledged")]
Code = Annotated[str | None, Query(min_length=1, max_length=64)]
AlertOrder = Annotated[Literal["newest", "severity"], Query(description="newest first, or (live alerts) most "
                                                                    "severe first then newest")]
_MAX_LISTED_MEMBERS = 100_000
PAGE_HEADERS = {
    "X-Total-Count": {"description": "rows in all", "schema": {"type": "string"}},
    "X-Truncated": {"description": "`true` when the limit left rows out", "schema": {"type": "string"}},
    "Link": {"description": '`<url>; rel="next"`: the next page', "schema": {"type": "string"}},
}


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


def _check_total(limit: int, members_limit: int) -> None:
    if limit * members_limit > _MAX_LISTED_MEMBERS:
        raise HTTPException(422, f"limit x members_limit may be at most {_MAX_LISTED_MEMBERS:,}; ask for fewer "
                                 "incidents or fewer members each")


async def _bounded(request: Request, pool: Any, limit: int,
                   read: Callable[[Any, int], Awaitable[list[dict[str, Any]]]],
                   shape: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] = lambda rows: rows) -> Response:
    """The first ``limit`` rows ``read`` gives (``X-Truncated: true`` when there were more), through the
    large-answer slots when ``limit`` is large."""
    async with heavy_slot(request, limit):
        async with pool.acquire() as conn:
            rows = await read(conn, limit + 1)
        headers = {"X-Truncated": "true"} if len(rows) > limit else {}
        return await json_model(shape(rows[:limit]), ANY_ROWS, headers)


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
    """Apply a committed change now; if that fails it is not the caller's error: the next tick applies it."""
    try:
        if request.app.state.alerts is not None:
            await request.app.state.alerts.reload_config()
        else:  # the leader runs elsewhere: tell it (ioc/cluster/actions.py re-reads at once)
            async with request.app.state.pool.acquire() as conn:
                await cluster_sql.notify(conn, cluster_sql.CHANNEL_CONFIG, {"origin": request.app.state.process_id})
    except Exception as err:
        if request.app.state.alerts is not None:
            request.app.state.alerts.reload_wanted = True
        logger.warning("alert configuration stored, not applied yet (%r); retried on the next tick", err)


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


@router.get("/api/incidents/live", dependencies=[requires(Role.VIEWER)], response_model=list[dict[str, Any]],
            responses={200: {"headers": PAGE_HEADERS}})
async def live_incidents(request: Request, pool: PoolDep, limit: Limit = 200, members_limit: MembersLimit = 50,
                         state: LiveStateFilter = None, severity: Annotated[list[Severity] | None, Query()] = None,
                         category: Code = None, district: Code = None) -> Response:
    """Open and acknowledged incidents with their members, most severe first (then oldest): the ``limit`` first.

    ``state`` (open, acknowledged), ``severity``, ``category`` and ``district`` filter in the database before the
    cut (the operator's live list), so the most severe matching incident comes first however old it is.

    Each shows at most ``members_limit`` members and devices (live ones first, then the most severe, then the
    newest), with ``member_count``, ``members_omitted``, ``members_truncated`` and ``device_count``; page an
    incident's alerts with ``/api/alerts?incident_id=``. ``X-Total-Count``: the live incidents matching, in all;
    ``X-Truncated: true`` when ``limit`` left some out. Read from the database like every other incident route,
    on any replica (one truth); the wall's own list comes with the live feed's snapshot."""
    _check_total(limit, members_limit)
    async with pool.acquire() as conn:
        rows, total = await views.live_rows(conn, limit, state=state, category=category, district=district,
                                            severity=[s.value for s in severity or ()] or None)
    size = sum(views.view_rows(r, members_limit) for r in rows)
    async with heavy_slot(request, size):  # a storm's answer a few at a time, built off the event loop
        async with pool.acquire() as conn:
            out = await views.bounded_views(conn, _district_name(request), rows, members_limit)
        headers = {"X-Total-Count": str(total)} | ({"X-Truncated": "true"} if total > len(rows) else {})
        return await json_model(out, ANY_ROWS, headers, size=size)


@router.get("/api/incidents/{incident_id}", dependencies=[requires(Role.VIEWER)], response_model=dict[str, Any])
async def get_incident(request: Request, pool: PoolDep, incident_id: int, alerts_limit: DetailLimit = 500,
                       members_limit: DetailLimit = 500, history_limit: DetailLimit = 500) -> Response:
    """One incident with its alerts (evidence included, newest first), its members and devices as the live views
    show them, and its history (the latest entries, oldest first).

    Each list is capped (``alerts_limit``, ``members_limit``, ``history_limit``) and says what it left out:
    ``alert_count`` / ``alerts_truncated`` / ``alerts_next`` (the next page of ``/api/alerts?incident_id=``),
    ``member_count`` / ``members_omitted`` / ``members_truncated`` / ``device_count``, ``history_count`` /
    ``history_truncated`` / ``history_next`` (older entries from ``/api/incidents/{id}/history``)."""
    async with pool.acquire() as conn:
        counts = await store.sizes(conn, incident_id=incident_id)
    if counts is None:
        raise HTTPException(404, f"no incident {incident_id}")
    alerts, members, events = counts
    size = 1 + min(alerts, alerts_limit) + min(members or alerts, members_limit) + min(events, history_limit)
    async with heavy_slot(request, size):
        async with pool.acquire() as conn:
            inc = await store.get_incident(conn, incident_id, alerts_limit, history_limit)
            if inc is None:
                raise HTTPException(404, f"no incident {incident_id}")
            view = (await views.bounded_views(conn, _district_name(request), [inc], members_limit))[0]
        inc.update({k: view[k] for k in ("members", "devices", "district_name", "member_count", "members_omitted",
                                         "members_truncated", "device_count")})
        more = inc["alert_count"] > len(inc["alerts"])
        inc["alerts_truncated"] = more
        inc["alerts_next"] = (f"/api/alerts?incident_id={incident_id}&limit={alerts_limit}&offset={alerts_limit}"
                              if more else None)
        _history_links(inc, f"/api/incidents/{incident_id}/history", history_limit)
        return await json_model(inc, ANY_DOC, size=size)


@router.get("/api/incidents/{incident_id}/history", dependencies=[requires(Role.VIEWER)],
            response_model=list[dict[str, Any]], responses={200: {"headers": PAGE_HEADERS}})
async def incident_history(request: Request, pool: PoolDep, incident_id: int, limit: Limit = 500,
                           offset: Offset = 0) -> Response:
    """An incident's audit trail (its alerts' included): the ``limit`` entries before the newest ``offset``,
    oldest first; ``X-Truncated`` and ``Link`` lead to older ones."""
    return await _history_page(request, pool, limit, offset, incident_id=incident_id)


@router.post("/api/incidents/{incident_id}/{action}")
async def act_on_incident(request: Request, incident_id: int, action: actions.Action, body: ActionRequest,
                          me: Annotated[Principal, requires(Role.OFFICER)]) -> dict[str, Any]:
    """``ack``, ``assign``, ``comment``, ``resolve`` or ``close`` an incident; returns it as it now is.

    ``action`` is an enum of the schema (another answers 422), so clients and the fuzzers know every action."""
    if action == "comment" and not body.note:
        raise HTTPException(422, "a comment needs a note")
    # Applied by the leader, wherever it runs (this process, or another through the database: ioc/cluster).
    try:
        return await actions.apply(request.app.state, action, incident_id, me.actor, body.note, body.assignee)
    except actions.ActionFailed as err:
        raise HTTPException(err.status, str(err)) from None


@router.get("/api/alerts", dependencies=[requires(Role.VIEWER)], response_model=list[dict[str, Any]],
            responses={200: {"headers": PAGE_HEADERS}})
async def list_alerts(request: Request, pool: PoolDep, state: StateFilter = None, severity: SeverityFilter = None,
                      device_id: str | None = None, district: str | None = None, rule: str | None = None,
                      incident_id: int | None = None, since: ApiTime | None = None,
                      limit: Limit = 100, offset: Offset = 0, order: AlertOrder = "newest") -> Response:
    """Alerts, newest first (from the ``offset``-th: an incident's alerts page with ``incident_id``).

    ``order=severity``: live alerts only (``state`` open and/or acknowledged, default both), most severe first then
    newest, filtered in the database before the cut (the operator's live list: a storm's old critical alert comes
    first however many newer ones there are); ``X-Total-Count`` says how many match, ``X-Truncated: true`` when
    ``limit`` left some out. ``incident_id`` and ``since`` do not apply to it."""
    if order == "severity":
        return await _live_alerts(request, pool, state, severity, device_id, district, rule, limit, offset)
    async with heavy_slot(request, limit):
        async with pool.acquire() as conn:
            rows = await store.list_alerts(conn, state=state, severity=severity, device_id=device_id,
                                           district=district, rule=rule, incident_id=incident_id, since=since,
                                           limit=limit, offset=offset)
        return await json_model(rows, ANY_ROWS)


async def _live_alerts(request: Request, pool: Any, state: list[str] | None, severity: list[str] | None,
                       device_id: str | None, district: str | None, rule: str | None, limit: int,
                       offset: int) -> Response:
    if state is not None and not set(state) <= set(store.LIVE_STATES):
        raise HTTPException(422, "order=severity lists live alerts: state may be open or acknowledged")
    async with heavy_slot(request, limit):
        async with pool.acquire() as conn:
            rows, total = await store.live_alerts(conn, state=state, severity=severity, device_id=device_id,
                                                  district=district, rule=rule, limit=limit, offset=offset)
        headers = {"X-Total-Count": str(total)} | ({"X-Truncated": "true"} if offset + len(rows) < total else {})
        return await json_model(rows, ANY_ROWS, headers)


@router.get("/api/alerts/{alert_id}", dependencies=[requires(Role.VIEWER)], response_model=dict[str, Any])
async def get_alert(request: Request, pool: PoolDep, alert_id: int, history_limit: DetailLimit = 500) -> Response:
    """One alert with its history (the latest ``history_limit`` entries, oldest first; ``history_count``,
    ``history_truncated``, ``history_next``: older entries from ``/api/alerts/{id}/history``)."""
    async with pool.acquire() as conn:
        counts = await store.sizes(conn, alert_id=alert_id)
    if counts is None:
        raise HTTPException(404, f"no alert {alert_id}")
    size = 1 + min(counts[2], history_limit)
    async with heavy_slot(request, size):
        async with pool.acquire() as conn:
            alert = await store.get_alert(conn, alert_id, history_limit)
        if alert is None:
            raise HTTPException(404, f"no alert {alert_id}")
        _history_links(alert, f"/api/alerts/{alert_id}/history", history_limit)
        return await json_model(alert, ANY_DOC, size=size)


@router.get("/api/alerts/{alert_id}/history", dependencies=[requires(Role.VIEWER)],
            response_model=list[dict[str, Any]], responses={200: {"headers": PAGE_HEADERS}})
async def alert_history(request: Request, pool: PoolDep, alert_id: int, limit: Limit = 500,
                        offset: Offset = 0) -> Response:
    """An alert's audit trail: the ``limit`` entries before the newest ``offset``, oldest first."""
    return await _history_page(request, pool, limit, offset, alert_id=alert_id)


def _history_links(doc: dict[str, Any], path: str, limit: int) -> None:
    more = doc["history_count"] > len(doc["history"])
    doc["history_truncated"] = more
    doc["history_next"] = f"{path}?limit={limit}&offset={limit}" if more else None


async def _history_page(request: Request, pool: Any, limit: int, offset: int, *, incident_id: int | None = None,
                        alert_id: int | None = None) -> Response:
    async with heavy_slot(request, limit):
        async with pool.acquire() as conn:
            if await store.sizes(conn, incident_id=incident_id, alert_id=alert_id) is None:
                raise HTTPException(404, f"no {'incident' if incident_id is not None else 'alert'} "
                                         f"{incident_id if incident_id is not None else alert_id}")
            rows, total = await store.history_page(conn, incident_id=incident_id, alert_id=alert_id, limit=limit,
                                                   offset=offset)
        headers = {"X-Total-Count": str(total)}
        if offset + len(rows) < total:
            headers |= {"X-Truncated": "true",
                        "Link": f'<{request.url.include_query_params(offset=offset + limit)}>; rel="next"'}
        return await json_model(rows, ANY_ROWS, headers)


@router.get("/api/notifications", dependencies=[requires(Role.OFFICER)], response_model=list[dict[str, Any]])
async def list_notifications(request: Request, pool: PoolDep, status: str | None = None,
                             incident_id: int | None = None, limit: Limit = 100) -> Response:
    """The notification outbox: what was sent, what is waiting, what failed and why."""
    async with heavy_slot(request, limit):
        async with pool.acquire() as conn:
            rows = await outbox.list_notifications(conn, limit, status=status, incident_id=incident_id)
        for row in rows:  # a webhook's URL is its password: the answer names its site only, errors quoting it too
            row["target"] = site_of(row["target"]) if row["channel"] == "webhook" else row["target"]
            row["last_error"] = row["last_error"] and redact_urls(row["last_error"])
        return await json_model(rows, ANY_ROWS)


# --- silences ------------------------------------------------------------------------------------------

@router.get("/api/silences", dependencies=[requires(Role.VIEWER)], response_model=list[dict[str, Any]],
            responses={200: {"headers": PAGE_HEADERS}})
async def list_silences(request: Request, pool: PoolDep, include_expired: bool = False,
                        limit: Limit = 1000) -> Response:
    """Active silences (with ``include_expired``, all), newest first; ``X-Truncated: true`` when cut."""
    return await _bounded(request, pool, limit, lambda c, n: store.list_silences(c, include_expired, limit=n))


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
        row = await store.create_silence(conn, matchers, starts, body.ends_at, body.reason, me.actor)
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

@router.get("/api/officers", dependencies=[requires(Role.VIEWER)], response_model=list[dict[str, Any]],
            responses={200: {"headers": PAGE_HEADERS}})
async def list_officers(request: Request, pool: PoolDep, me: CurrentPrincipal, limit: Limit = 1000) -> Response:
    """The roster's officers; e-mail and phone only for officers and above (a wall's viewer sees names)."""
    def shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if me is None or me.role < Role.OFFICER:
            return [{k: v for k, v in r.items() if k not in ("email", "phone")} for r in rows]
        return rows

    return await _bounded(request, pool, limit, store.list_officers, shown)


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


@router.get("/api/shifts", dependencies=[requires(Role.VIEWER)], response_model=list[dict[str, Any]],
            responses={200: {"headers": PAGE_HEADERS}})
async def list_shifts(request: Request, pool: PoolDep, since: ApiTime | None = None, limit: Limit = 1000) -> Response:
    """Shifts ending after ``since`` (default: all), earliest first."""
    return await _bounded(request, pool, limit, lambda c, n: store.list_shifts(c, since, limit=n))


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


@router.get("/api/policies", dependencies=[requires(Role.VIEWER)], response_model=list[dict[str, Any]],
            responses={200: {"headers": PAGE_HEADERS}})
async def list_policies(request: Request, pool: PoolDep, limit: Limit = 1000) -> Response:
    return await _bounded(request, pool, limit, store.list_policies,
                          lambda rows: rows or [escalation.DEFAULT_POLICY.to_dict() | {"builtin": True}])


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
