"""The live feed over WebSocket, and REST views of the live state (districts, summary, snapshots)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, WebSocket, WebSocketDisconnect
from pydantic import ValidationError

from ingest.metrics import HANDLER_ERRORS
from ioc.api.deps import PoolDep, Role, connection_principal, recheck, requires, websocket_origin, websocket_slot
from ioc.api.edge import bad_text_in_message
from ioc.api.heavy import ANY_ROWS, heavy_slot, json_model
from ioc.api.models import ApiTime
from ioc.api.routes_alerts import ActionRequest
from ioc.api.ws_credentials import watch_of
from ioc.auth.service import client_address
from ioc.cluster import actions as cluster_actions
from ioc.live.client import LAG_EDGES
from ioc.live.filters import FilterError, Subscription
from ioc.live.hub import ClientSession, LiveHub, encode
from storage import queries

logger = logging.getLogger(__name__)
router = APIRouter(tags=["live"])


@router.websocket("/ws/live", dependencies=[Depends(websocket_origin), requires(Role.VIEWER)])
async def live_feed(ws: WebSocket) -> None:
    """Subscribe with query parameters (``kinds``, ``devices``, ``districts``, ``bbox``, ``types``,
    ``resume_from`` + ``epoch``) or a ``{"type": "subscribe", ...}`` message. See docs/live-feed.md.
    Authenticated at the handshake (session cookie, ``Authorization: Bearer`` or ``?token=``); actions need
    the officer role. Closed with 4401 once the credential no longer holds (ioc/api/ws_credentials.py)."""
    hub: LiveHub = ws.app.state.hub
    async with websocket_slot(ws):
        await _live_feed(ws, hub)


async def _live_feed(ws: WebSocket, hub: LiveHub) -> None:
    budget = hub.budgets.get(client_address(ws))  # the event loop's time its address's screens may take
    await budget.pause()  # before its snapshot is built
    await ws.accept()
    try:
        sub = Subscription.parse(dict(ws.query_params))
        resume = _int_or_none(ws.query_params.get("resume_from"))
    except (FilterError, ValueError) as err:
        await ws.send_text(encode({"type": "error", "detail": str(err)[:_MAX_DETAIL]}))
        await ws.close(code=1008, reason=str(err)[:120])
        return
    began = time.perf_counter()
    client = hub.attach(sub, resume, ws.query_params.get("epoch"))
    budget.charge(time.perf_counter() - began)
    principal = connection_principal(ws)
    watch = watch_of(ws)
    screen = watch.add(ws, client, principal, Role.VIEWER) if principal is not None else None
    sender = asyncio.create_task(_send_loop(ws, client, hub))
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("text") is None:  # a binary frame (receive_text raised KeyError: the screen was cut off)
                client.push_control(encode({"type": "error", "detail": "binary frames are not understood; "
                                                                      "send JSON as text"}))
                continue
            began = time.perf_counter()
            client = _handle_client_message(hub, client, message["text"], ws)
            budget.charge(time.perf_counter() - began)
            await budget.pause()
            # its answers unread: read on once it reads them (or once its sender ended: the socket is gone)
            while client.control_full and not client.closed and not sender.done():
                await asyncio.sleep(_BACKLOG_POLL_S)
    except WebSocketDisconnect:
        pass
    finally:
        if screen is not None:
            watch.remove(screen)
        hub.detach(client)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


def _handle_client_message(hub: LiveHub, client: ClientSession, raw: str, ws: WebSocket) -> ClientSession:
    try:
        doc = orjson.loads(raw)
        if not isinstance(doc, dict):
            raise FilterError("messages must be JSON objects")
        refused = bad_text_in_message(doc)
        if refused:
            raise FilterError(refused)
        if doc.get("type") == "subscribe":
            hub.resubscribe(client, Subscription.parse(doc), _int_or_none(doc.get("resume_from")), doc.get("epoch"))
        elif doc.get("type") == "ping":
            client.push_control(encode({"type": "pong", "seq": hub.seq}))
        elif doc.get("type") == "action":
            mine: set[asyncio.Task[None]] = ws.scope.setdefault("ioc.actions", set())
            if len(mine) >= _MAX_ACTIONS_IN_FLIGHT:  # a flood is refused at once, not queued as tasks on the database
                raise FilterError(f"{len(mine)} actions are still waiting for their results; wait for them")
            task = asyncio.create_task(_ws_action(ws, client, doc))
            for held in (_ACTIONS, mine):
                held.add(task)
                task.add_done_callback(held.discard)
        else:
            raise FilterError(f"unknown message type {doc.get('type')!r}; use subscribe, ping or action")
    except (FilterError, ValueError, orjson.JSONDecodeError) as err:
        # the reason only, never the whole input it may quote (a 'type' of 10 MB came back whole)
        client.push_control(encode({"type": "error", "detail": str(err)[:_MAX_DETAIL]}))
    except Exception as err:  # one odd message must not end the screen's connection
        HANDLER_ERRORS.labels("websocket").inc()
        logger.exception("WebSocket message handling raised")
        client.push_control(encode({"type": "error", "detail": f"message not handled: {type(err).__name__}"}))
    return client


_ACTIONS: set[asyncio.Task[None]] = set()
#: How often a screen held back for unread answers is checked again, and the longest error detail sent.
_BACKLOG_POLL_S = 0.05
_MAX_DETAIL = 300
#: Actions one screen may have waiting for their results (each rechecks its credential in the database first).
_MAX_ACTIONS_IN_FLIGHT = 8


async def _ws_action(ws: WebSocket, client: ClientSession, doc: dict[str, Any]) -> None:
    """Officers' actions from a screen: ``{"type": "action", "action": "ack", "incident_id": 7, "actor": "an",
    "note": "..."}``; answered with an ``action_result`` frame (the change itself arrives as an incident frame)."""
    ref = doc.get("ref")
    short = (isinstance(ref, str) and len(ref) <= _MAX_DETAIL) or (isinstance(ref, int) and abs(ref) < 2**63)
    if not (ref is None or short):
        ref = None  # echoed back: a scalar of a few characters only (a 10 MB ref came back 8 times at once)
    try:
        me = await recheck(ws)  # still valid (not logged out, disabled or revoked since the handshake)
        if me is None:
            raise PermissionError("your session or token is no longer valid; log in again")
        if me.role < Role.OFFICER:
            raise PermissionError(f"actions need the officer role; you are {me.role.label}")
        if not await ws.app.state.auth.allow_action(me):
            raise PermissionError("too many actions; slow down")
        action = str(doc.get("action"))
        if action not in cluster_actions.ACTIONS:
            raise ValueError(f"action must be one of {', '.join(cluster_actions.ACTIONS)}")
        body = ActionRequest.model_validate({k: v for k, v in doc.items() if k in ActionRequest.model_fields})
        incident_id = doc.get("incident_id")
        if not isinstance(incident_id, int) or isinstance(incident_id, bool):
            raise ValueError("incident_id must be an integer")
        if action == "comment" and not body.note:
            raise ValueError("a comment needs a note")
        # Applied by the leader, wherever it runs (ioc/cluster/actions.py).
        inc = await cluster_actions.apply(ws.app.state, action, incident_id, me.actor, body.note, body.assignee)
        client.push_control(encode({"type": "action_result", "ref": ref, "ok": True, "incident_id": inc["id"],
                                    "state": inc["state"]}))
    except cluster_actions.ActionFailed as err:
        client.push_control(encode({"type": "action_result", "ref": ref, "ok": False, "status": err.status,
                                    "detail": str(err)[:_MAX_DETAIL]}))
    except PermissionError as err:
        client.push_control(encode({"type": "action_result", "ref": ref, "ok": False, "status": 403,
                                    "detail": str(err)}))
    except ValidationError as err:
        client.push_control(encode({"type": "action_result", "ref": ref, "ok": False, "status": 422,
                                    "detail": str(err.errors(include_url=False, include_input=False))}))
    except Exception as err:  # every failure goes back to the screen that asked
        client.push_control(encode({"type": "action_result", "ref": ref, "ok": False,
                                    "detail": str(err)[:_MAX_DETAIL]}))


async def _send_loop(ws: WebSocket, client: ClientSession, hub: LiveHub) -> None:
    # Each WebSocket message is a JSON array of frames: a batch the screen's whole audience shares (joined
    # once for all of them), or the loose and control frames queued since the last send.
    while not client.closed:
        await client.wake.wait()
        for message in hub.take_messages(client):
            began = client.send_started = time.monotonic()
            await ws.send_text(message)
            client.send_started = 0.0
            hub.sent(time.monotonic() - began)
        hub.delivered(client)


def _by_edge(counts: list[int]) -> dict[str, int]:
    """Lag counts keyed by their upper edge in seconds (LAG_EDGES, then "inf")."""
    return dict(zip([*map(str, LAG_EDGES), "inf"], counts, strict=True))


def _int_or_none(value: Any) -> int | None:
    """``resume_from`` as an integer; anything else (a list, an object, 1e400, "x") is the client's error."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise FilterError("resume_from must be an integer") from None


@router.get("/api/live/stats", dependencies=[requires(Role.VIEWER)])
async def live_stats(request: Request) -> dict[str, Any]:
    """Live-feed health: sequence, clients, how many are behind, deepest queue."""
    hub: LiveHub = request.app.state.hub
    clients = list(hub.clients)
    return {"epoch": hub.epoch, "seq": hub.seq, "devices": len(hub.table.devices), "clients": len(clients),
            "lagging_clients": sum(c.lagging for c in clients), "frames_out": hub.frames_out,
            "max_queue": max((c.queued for c in clients), default=0), "audiences": len(hub.audiences),
            "lagged_total": hub.lagged_total, "lagged_on_socket": hub.lagged_on_socket, "loop_stalls": hub.loop_stalls,
            "loop_stall_s": round(hub.loop_stall_s, 3), "loop_late_max_s": round(hub.loop_late_max_s, 3),
            "slow_sends": hub.slow_sends, "send_wait_s": round(hub.send_wait_s, 3),
            # screens' messages read later for their address's share of the loop (ioc/live/budget.py)
            "messages_held": hub.budgets.held, "messages_held_s": round(hub.budgets.held_s, 3),
            # the input side: the age of messages (device stamp -> this replica) by upper edge in seconds,
            # and (a replica following the broker) what its intake set aside
            "input_lag_counts": _by_edge(node.lag_counts) if (node := getattr(request.app.state, "node", None))
            else {},
            # ... and the output side: a batch's flush -> its send to a screen done, by the same edges
            "output_lag_counts": _by_edge(hub.out_lag_counts),
            **(listener.intake.stats() if (listener := request.app.state.listener) is not None else {})}


@router.get("/api/findings", dependencies=[requires(Role.VIEWER)], response_model=list[dict[str, Any]])
async def findings(request: Request, pool: PoolDep, limit: Annotated[int, Query(ge=1, le=5000)] = 200,
                   device_id: str | None = None, since: ApiTime | None = None) -> Response:
    """Detector findings (numeric and camera), newest first."""
    async with heavy_slot(request, limit):  # large answers a few at a time, built off the event loop
        async with pool.acquire() as conn:
            rows = await queries.recent_findings(conn, limit, device_id, since)
        for row in rows:
            if isinstance(row["detail"], str):
                row["detail"] = orjson.loads(row["detail"])
        return await json_model(rows, ANY_ROWS)


@router.get("/api/districts", dependencies=[requires(Role.VIEWER)])
async def districts(request: Request) -> list[dict[str, Any]]:
    """Districts of the city with their bounding box and device counts by kind."""
    city = request.app.state.city
    hub: LiveHub = request.app.state.hub
    counts: dict[str, dict[str, int]] = {}
    for row in hub.summary():
        if row["district"]:
            counts.setdefault(row["district"], {})[row["kind"]] = row["total"]
    return [{"code": d.code, "name": d.name, "bbox": d.bbox, "population": d.properties.get("population"),
             "devices": counts.get(d.code, {})} for d in city.districts]


@router.get("/api/city", dependencies=[requires(Role.VIEWER)], response_class=Response,
            responses={200: {"content": {"application/geo+json": {}}}})
async def city_geojson(request: Request) -> Response:
    """The city's GeoJSON (district outlines, roads) for maps that must work offline."""
    return Response(orjson.dumps(request.app.state.city.geojson), media_type="application/geo+json")


@router.get("/api/summary", dependencies=[requires(Role.VIEWER)])
async def summary(request: Request) -> list[dict[str, Any]]:
    """Device counts per district and kind: total, online, offline, degraded, unknown."""
    hub: LiveHub = request.app.state.hub
    return hub.summary()


@router.get("/api/devices/{device_id}/snapshot", response_class=Response, dependencies=[requires(Role.VIEWER)],
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "no snapshot"}})
async def latest_snapshot(pool: PoolDep, device_id: str, at: ApiTime | None = None) -> Response:
    """The most recent snapshot of a camera as ``image/jpeg``; with ``at`` (RFC 3339), the picture it showed
    then (the evidence of an alert), while it is still within the kept history."""
    if at is not None and at.tzinfo is None:
        raise HTTPException(422, "at needs a UTC offset (Z or +07:00)")
    async with pool.acquire() as conn:
        snap = await queries.latest_snapshot(conn, device_id, at)
    if snap is None:
        raise HTTPException(404, f"no snapshot for {device_id!r}" + (f" at {at.isoformat()}" if at else ""))
    return Response(snap["jpeg"], media_type="image/jpeg", headers={
        "Last-Modified": snap["last_seen"].strftime("%a, %d %b %Y %H:%M:%S GMT"), "Cache-Control": "no-cache",
        "X-Snapshot-First-Seen": snap["first_seen"].isoformat()})
