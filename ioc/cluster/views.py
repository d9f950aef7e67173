"""Incidents as screens show them, read from the database: the one truth every replica serves.

The shape is :meth:`ioc.alerts.stage.AlertStage.feed_view`'s (members capped, with their counts; devices; district
name), built from the stored rows, so ``/api/incidents/live``, ``/api/incidents/{id}`` and the live feed
(:class:`ioc.cluster.sync.ReplicaSync`) never disagree, whichever replica answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ioc.alerts.from_rows import alert_from_row, incident_from_row
from ioc.alerts.model import LIVE, Severity, rank
from ioc.alerts.stage import _member
from storage import alerts as store

DistrictName = Callable[[str | None], str | None]

_LIVE_STATES = [s.value for s in LIVE]
#: Views of more rows than this are built on a worker thread (a storm's reload, 3,000 incidents and 23,000 members,
#: held the event loop 0.5 s every resync).
_THREAD_ROWS = 2000
_T = TypeVar("_T")


async def off_loop(rows: int, build: Callable[[], _T]) -> _T:
    """``build()``, on a worker thread when it works on many rows (under that the hop costs more than it saves)."""
    return await asyncio.to_thread(build) if rows > _THREAD_ROWS else build()


# --- bounded views: a storm's thousands of incidents, an incident's tens of thousands of members -------------------

def _rank_sql(col: str) -> str:
    """``rank()`` in SQL (unknown severities rank lowest)."""
    return "CASE " + " ".join(f"WHEN {col} = '{s.value}' THEN {rank(s.value)}" for s in Severity) + " ELSE -1 END"


_A_COLS = ", ".join(f"a.{c.strip()}" for c in store._ALERT_COLS.split(","))
# An incident's members: the ids its row lists, else (rows written before members were kept) its alerts.
_MEMBERS = ("m(inc, alert) AS (SELECT * FROM unnest($1::int8[], $2::int8[]) UNION ALL "
            "SELECT incident_id, id FROM alerts WHERE incident_id = ANY($3::int8[]))")
# Kept first: live members, then the most severe, then the newest.
_KEPT = (f"WITH {_MEMBERS} SELECT * FROM (SELECT m.inc AS _inc, {_A_COLS}, row_number() OVER (PARTITION BY m.inc "
         "ORDER BY a.state = ANY($4::text[]) DESC, "
         f"{_rank_sql('a.severity')} DESC, a.started_at DESC, a.id DESC) AS _pick FROM m JOIN alerts a "
         "ON a.id = m.alert) k WHERE _pick <= $5")
# Per incident: members found, distinct devices, the first of them by name.
_COUNTS = (f"WITH {_MEMBERS} SELECT m.inc, count(*) AS found, count(DISTINCT a.device_id) AS devices, "
           "(array_agg(DISTINCT a.device_id ORDER BY a.device_id) FILTER (WHERE a.device_id IS NOT NULL))[1:$4] "
           "AS first FROM m JOIN alerts a ON a.id = m.alert GROUP BY m.inc")


def listed_members(row: dict[str, Any]) -> list[int] | None:
    """The member ids an incident row lists (None: a row written before they were kept)."""
    listed = (row["detail"] or {}).get("members")
    return None if listed is None else [int(m) for m in listed]


def view_rows(row: dict[str, Any], members_limit: int) -> int:
    """Rows a bounded view of ``row`` holds (itself and its kept members): what its answer weighs."""
    listed = listed_members(row)
    return 1 + min(members_limit, len(listed) if listed is not None else members_limit)


async def live_rows(conn: Any, limit: int | None, *, state: Sequence[str] | None = None,
                    severity: list[str] | None = None, category: str | None = None, district: str | None = None,
                    ) -> tuple[list[dict[str, Any]], int]:
    """The ``limit`` (None: all) live incidents most severe first (then oldest), and how many are live in all.

    ``state`` (open and/or acknowledged; None: both), ``severity``, ``category`` and ``district`` narrow both: the
    operator's filtered live list is picked here, so the most severe match is never cut for being old."""
    states = [s for s in _LIVE_STATES if state is None or s in state]
    rows = await conn.fetch(
        f"SELECT {store._INCIDENT_COLS}, count(*) OVER () AS _total FROM incidents WHERE state = ANY($1::text[]) "
        "AND ($3::text[] IS NULL OR severity = ANY($3)) AND ($4::text IS NULL OR category = $4) "
        "AND ($5::text IS NULL OR district = $5) "
        f"ORDER BY {_rank_sql('severity')} DESC, started_at, id LIMIT $2", states, limit, severity, category, district)
    total = int(rows[0]["_total"]) if rows else 0
    return await off_loop(len(rows), lambda: [store._parse(r, "detail") for r in rows]), total


async def incident_rows(conn: Any, ids: list[int]) -> list[dict[str, Any]]:
    """The rows of the given incidents (any state), by id."""
    rows = await conn.fetch(f"SELECT {store._INCIDENT_COLS} FROM incidents WHERE id = ANY($1::int8[]) ORDER BY id",
                            ids)
    return await off_loop(len(rows), lambda: [store._parse(r, "detail") for r in rows])


async def bounded_views(conn: Any, district_name: DistrictName, rows: list[dict[str, Any]], members_limit: int
                        ) -> list[dict[str, Any]]:
    """:func:`view` of each incident row with at most ``members_limit`` members and devices, whatever it holds.

    Kept members are the live ones, then the most severe, then the newest; shown in the incident's order.
    ``member_count`` (all listed), ``members_omitted`` (members not shown), ``members_truncated``,
    ``device_count`` (all distinct devices) say what was left out; the alerts themselves page through
    ``/api/alerts?incident_id=``. The database picks them: only what is shown is read."""
    if not rows:
        return []
    listed = {r["id"]: listed_members(r) for r in rows}
    pairs = [(i, m) for i, ids in listed.items() if ids for m in ids]
    args = ([p[0] for p in pairs], [p[1] for p in pairs], [i for i, ids in listed.items() if ids is None])
    kept_rows = await conn.fetch(_KEPT, *args, _LIVE_STATES, members_limit) if members_limit else []
    counts = {int(r["inc"]): (int(r["found"]), int(r["devices"]), list(r["first"] or []))
              for r in await conn.fetch(_COUNTS, *args, members_limit)}
    return await off_loop(len(rows) + len(kept_rows),
                           lambda: _bounded(rows, listed, kept_rows, counts, district_name))


def _bounded(rows: list[dict[str, Any]], listed: dict[int, list[int] | None], kept_rows: list[Any],
             counts: dict[int, tuple[int, int, list[str]]], district_name: DistrictName) -> list[dict[str, Any]]:
    kept: dict[int, list[dict[str, Any]]] = {r["id"]: [] for r in rows}
    for r in kept_rows:
        alert = store._parse(r, "evidence")
        kept[alert.pop("_inc")].append(alert)
    out = []
    for row in rows:
        inc = incident_from_row(row)
        ids = listed[inc.id]
        order = {m: n for n, m in enumerate(ids or [])}
        members = sorted((alert_from_row(a) for a in kept[inc.id]), key=lambda a: order.get(a.id, a.id))
        total, device_count, first_devices = counts.get(inc.id, (0, 0, []))
        out.append({**inc.to_dict(), "district_name": district_name(inc.district),
                    "members": [_member(a) for a in members], "devices": first_devices,
                    "member_count": len(ids) if ids is not None else total,
                    "members_truncated": total > len(members), "members_omitted": total - len(members),
                    "device_count": device_count})
    return out
