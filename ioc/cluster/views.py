"""Incidents as screens show them, read from the database: the one truth every replica serves.

The shape is :meth:`ioc.alerts.stage.AlertStage.incident_view`'s (members, devices, district name), built
from the stored rows, so ``/api/incidents``, ``/api/incidents/live``, ``/api/incidents/{id}`` and the
live feed never disagree, whichever replica answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ioc.alerts.model import LIVE, rank
from ioc.alerts.stage import _alert, _incident, _member
from storage import alerts as store

DistrictName = Callable[[str | None], str | None]

_LIVE_STATES = [s.value for s in LIVE]


async def incident_views(conn: Any, district_name: DistrictName, ids: list[int] | None = None
                         ) -> list[dict[str, Any]]:
    """Views of the given incidents (any state), or of every live one (open, acknowledged) when ``ids`` is None;
    live ones most severe first, as the engine orders them."""
    cols = store._INCIDENT_COLS
    if ids is None:
        rows = await conn.fetch(f"SELECT {cols} FROM incidents WHERE state = ANY($1::text[]) ORDER BY id",
                                _LIVE_STATES)
    else:
        rows = await conn.fetch(f"SELECT {cols} FROM incidents WHERE id = ANY($1::int8[]) ORDER BY id", ids)
    incidents = [store._parse(r, "detail") for r in rows]
    if not incidents:
        return []
    member_ids = sorted({m for i in incidents for m in (i["detail"] or {}).get("members") or []})
    alerts = {a["id"]: a for a in (store._parse(r, "evidence") for r in await conn.fetch(
        f"SELECT {store._ALERT_COLS} FROM alerts WHERE id = ANY($1::int8[]) OR incident_id = ANY($2::int8[])",
        member_ids, [i["id"] for i in incidents]))}
    views = [view(i, alerts, district_name) for i in incidents]
    if ids is None:
        views.sort(key=lambda v: (-rank(v["severity"]), v["started_at"]))
    return views


def view(row: dict[str, Any], alerts: dict[int, dict[str, Any]], district_name: DistrictName) -> dict[str, Any]:
    """One incident row and the alert rows it may refer to -> the incident as screens show it."""
    inc = _incident(row)
    listed = (row["detail"] or {}).get("members")
    if listed is None:  # rows written before members were kept in detail
        listed = sorted(a_id for a_id, a in alerts.items() if a["incident_id"] == inc.id)
    inc.members = [int(m) for m in listed]
    members = [_alert(alerts[m]) for m in inc.members if m in alerts]
    return {**inc.to_dict(), "district_name": district_name(inc.district), "members": [_member(a) for a in members],
            "devices": sorted({a.device_id for a in members if a.device_id})}
