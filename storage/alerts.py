"""SQL of the alert engine: alerts, incidents, audit trail, silences, roster and escalation policies.

Rows go in and out as plain dicts (the engine's ``to_dict()`` shape) so storage does not depend on
the engine. JSON columns are sent as text and cast, and parsed on the way out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

_INCIDENT_COLS = ("id, group_key, category, severity, state, title, district, started_at, updated_at, resolved_at, "
                  "closed_at, acked_by, acked_at, assignee, suppressed, detail")
_ALERT_COLS = ("id, dedupe_key, rule, category, severity, state, title, explanation, device_id, kind, district, "
               "incident_id, started_at, last_seen_at, resolved_at, closed_at, acked_by, acked_at, assignee, flaps, "
               "suppressed, evidence")


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _parse(row: Any, *json_cols: str) -> dict[str, Any]:
    out = dict(row)
    for col in json_cols:
        if isinstance(out.get(col), str):
            out[col] = orjson.loads(out[col])
    for col, value in out.items():
        # asyncpg reads a timestamptz of -infinity/infinity as a naive datetime.min/max: made aware, so a row that
        # holds one (stored before the API refused such times) still compares with every other time
        if isinstance(value, datetime) and value.tzinfo is None:
            out[col] = value.replace(tzinfo=UTC)
    return out


async def save_changes(conn: Any, incidents: list[dict[str, Any]], alerts: list[dict[str, Any]],
                       audit: list[tuple[datetime, int | None, int | None, str, str, str | None, dict[str, Any]]]
                       ) -> None:
    """Upsert changed incidents and alerts and append audit entries (call inside a transaction).

    Incident dicts carry ``detail`` (escalation state, member count); alert dicts carry ``evidence``.
    """
    if incidents:
        await conn.executemany(
            f"INSERT INTO incidents ({_INCIDENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, "
            "$13, $14, $15, $16::jsonb) ON CONFLICT (id) DO UPDATE SET severity = excluded.severity, "
            "state = excluded.state, title = excluded.title, updated_at = excluded.updated_at, "
            "resolved_at = excluded.resolved_at, closed_at = excluded.closed_at, acked_by = excluded.acked_by, "
            "acked_at = excluded.acked_at, assignee = excluded.assignee, suppressed = excluded.suppressed, "
            "detail = excluded.detail",
            [(i["id"], i["group_key"], i["category"], i["severity"], i["state"], i["title"], i["district"],
              i["started_at"], i["updated_at"], i["resolved_at"], i["closed_at"], i["acked_by"], i["acked_at"],
              i["assignee"], i["suppressed"], _json(i.get("detail", {}))) for i in incidents])
    if alerts:
        await conn.executemany(
            f"INSERT INTO alerts ({_ALERT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
            "$14, $15, $16, $17, $18, $19, $20, $21, $22::jsonb) ON CONFLICT (id) DO UPDATE SET "
            "severity = excluded.severity, state = excluded.state, title = excluded.title, "
            "explanation = excluded.explanation, incident_id = excluded.incident_id, "
            "last_seen_at = excluded.last_seen_at, resolved_at = excluded.resolved_at, "
            "closed_at = excluded.closed_at, acked_by = excluded.acked_by, acked_at = excluded.acked_at, "
            "assignee = excluded.assignee, flaps = excluded.flaps, suppressed = excluded.suppressed, "
            "evidence = excluded.evidence",
            [(a["id"], a["dedupe_key"], a["rule"], a["category"], a["severity"], a["state"], a["title"],
              a["explanation"], a["device_id"], a["kind"], a["district"], a["incident_id"], a["started_at"],
              a["last_seen_at"], a["resolved_at"], a["closed_at"], a["acked_by"], a["acked_at"], a["assignee"],
              a["flaps"], a["suppressed"], _json({**a.get("evidence", {}), "_lat": a.get("lat"),
                                                  "_lon": a.get("lon")})) for a in alerts])
    if audit:
        await conn.executemany(
            "INSERT INTO alert_events (ts, incident_id, alert_id, action, actor, note, detail) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
            [(ts, inc, alert, action, actor, note, _json(detail)) for ts, inc, alert, action, actor, note, detail
             in audit])


async def next_ids(conn: Any) -> tuple[int, int]:
    """(next alert id, next incident id): the engine numbers its own rows (one engine per database)."""
    row = await conn.fetchrow("SELECT (SELECT coalesce(max(id), 0) + 1 FROM alerts) AS a, "
                              "(SELECT coalesce(max(id), 0) + 1 FROM incidents) AS i")
    return int(row["a"]), int(row["i"])


async def last_resolutions(conn: Any, within_s: float) -> dict[str, datetime]:
    """The last resolution time of every dedupe key resolved within ``within_s`` seconds (closed alerts too)."""
    rows = await conn.fetch(
        "SELECT dedupe_key, max(resolved_at) AS at FROM alerts WHERE resolved_at > now() - make_interval(secs => $1) "
        "GROUP BY dedupe_key", within_s)
    return {r["dedupe_key"]: r["at"] for r in rows}


async def load_unclosed(conn: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Incidents not closed yet and all their alerts (what the engine holds in memory)."""
    incidents = [_parse(r, "detail") for r in await conn.fetch(
        f"SELECT {_INCIDENT_COLS} FROM incidents WHERE state <> 'closed' ORDER BY id")]
    alerts = [_parse(r, "evidence") for r in await conn.fetch(
        f"SELECT {_ALERT_COLS} FROM alerts WHERE incident_id IN (SELECT id FROM incidents WHERE state <> 'closed') "
        "ORDER BY id")]
    return incidents, alerts


async def list_incidents(conn: Any, *, state: list[str] | None = None, severity: list[str] | None = None,
                         category: str | None = None, district: str | None = None, since: datetime | None = None,
                         limit: int = 100) -> list[dict[str, Any]]:
    """Incidents, newest first, with their member count."""
    rows = await conn.fetch(
        f"SELECT {_INCIDENT_COLS}, (SELECT count(*) FROM alerts a WHERE a.incident_id = i.id) AS member_count "
        "FROM incidents i WHERE ($1::text[] IS NULL OR state = ANY($1)) AND ($2::text[] IS NULL OR severity = ANY($2)) "
        "AND ($3::text IS NULL OR category = $3) AND ($4::text IS NULL OR district = $4) "
        "AND ($5::timestamptz IS NULL OR started_at >= $5) ORDER BY started_at DESC, id DESC LIMIT $6",
        state, severity, category, district, since, limit)
    return [_parse(r, "detail") for r in rows]


async def list_alerts(conn: Any, *, state: list[str] | None = None, severity: list[str] | None = None,
                      device_id: str | None = None, district: str | None = None, rule: str | None = None,
                      incident_id: int | None = None, since: datetime | None = None,
                      limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    """Alerts, newest first (from the ``offset``-th)."""
    rows = await conn.fetch(
        f"SELECT {_ALERT_COLS} FROM alerts WHERE ($1::text[] IS NULL OR state = ANY($1)) "
        "AND ($2::text[] IS NULL OR severity = ANY($2)) AND ($3::text IS NULL OR device_id = $3) "
        "AND ($4::text IS NULL OR district = $4) AND ($5::text IS NULL OR rule = $5) "
        "AND ($6::bigint IS NULL OR incident_id = $6) AND ($7::timestamptz IS NULL OR started_at >= $7) "
        "ORDER BY started_at DESC, id DESC LIMIT $8 OFFSET $9", state, severity, device_id, district, rule,
        incident_id, since, limit, offset)
    return [_parse(r, "evidence") for r in rows]


#: Most severe first: the position in this list (the alerts table's CHECK allows exactly these). The expression of
#: the ``alerts_live_rank`` index (migration 0014): keep both the same, or the live list sorts every live alert.
SEVERITY_POSITION = "array_position(ARRAY['critical', 'major', 'minor', 'warning', 'info']::text[], severity)"
LIVE_STATES = ("open", "acknowledged")


async def live_alerts(conn: Any, *, state: list[str] | None = None, severity: list[str] | None = None,
                      device_id: str | None = None, district: str | None = None, rule: str | None = None,
                      limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Live (open, acknowledged) alerts matching the filters, most severe first then newest (from the
    ``offset``-th), and how many match in all.

    The live states are written out (not a parameter) so the planner uses the partial index of live alerts:
    a storm's thousands, not the years of resolved alerts, are read and counted."""
    where = ("state IN ('open', 'acknowledged') AND ($1::text[] IS NULL OR state = ANY($1)) "
             "AND ($2::text[] IS NULL OR severity = ANY($2)) AND ($3::text IS NULL OR device_id = $3) "
             "AND ($4::text IS NULL OR district = $4) AND ($5::text IS NULL OR rule = $5)")
    args = (state, severity, device_id, district, rule)
    rows = await conn.fetch(f"SELECT {_ALERT_COLS} FROM alerts WHERE {where} "
                            f"ORDER BY {SEVERITY_POSITION}, started_at DESC, id DESC LIMIT $6 OFFSET $7",
                            *args, limit, offset)
    if offset == 0 and len(rows) < limit:
        total = len(rows)
    else:  # counted apart: a window count over the page's query would read every match's row, not the index
        total = int(await conn.fetchval(f"SELECT count(*) FROM alerts WHERE {where}", *args))
    return [_parse(r, "evidence") for r in rows], total


async def get_incident(conn: Any, incident_id: int, alerts_limit: int = 10_000,
                       history_limit: int = 1000) -> dict[str, Any] | None:
    """One incident with its newest ``alerts_limit`` alerts (newest first) and newest ``history_limit`` audit entries
    (oldest first), and how many of each it has in all (``alert_count``, ``history_count``)."""
    row = await conn.fetchrow(f"SELECT {_INCIDENT_COLS} FROM incidents WHERE id = $1", incident_id)
    if row is None:
        return None
    out = _parse(row, "detail")
    out["alerts"] = await list_alerts(conn, incident_id=incident_id, limit=alerts_limit)
    out["alert_count"] = (len(out["alerts"]) if len(out["alerts"]) < alerts_limit else
                          await conn.fetchval("SELECT count(*) FROM alerts WHERE incident_id = $1", incident_id))
    out["history"], out["history_count"] = await history_page(conn, incident_id=incident_id, limit=history_limit)
    return out


async def get_alert(conn: Any, alert_id: int, history_limit: int = 1000) -> dict[str, Any] | None:
    """One alert with its newest ``history_limit`` audit entries (oldest first) and ``history_count``."""
    row = await conn.fetchrow(f"SELECT {_ALERT_COLS} FROM alerts WHERE id = $1", alert_id)
    if row is None:
        return None
    out = _parse(row, "evidence")
    out["history"], out["history_count"] = await history_page(conn, alert_id=alert_id, limit=history_limit)
    return out


async def sizes(conn: Any, *, incident_id: int | None = None, alert_id: int | None = None
                ) -> tuple[int, int, int] | None:
    """(alerts, listed members, audit entries) of an incident or (0, 0, entries) of an alert; None if missing.
    Index-only counts: what an answer would hold, known before it is read."""
    if incident_id is not None:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM alerts WHERE incident_id = $1) AS alerts, "
            "coalesce(jsonb_array_length(detail -> 'members'), 0) AS members, "
            "(SELECT count(*) FROM alert_events WHERE incident_id = $1) AS events FROM incidents WHERE id = $1",
            incident_id)
    else:
        row = await conn.fetchrow(
            "SELECT 0 AS alerts, 0 AS members, (SELECT count(*) FROM alert_events WHERE alert_id = $1) AS events "
            "FROM alerts WHERE id = $1", alert_id)
    return None if row is None else (int(row["alerts"]), int(row["members"]), int(row["events"]))


# Who an audit entry's actor is (ioc.auth.model.Principal.actor): the engine ("system"), an API token or a wall's
# session ("token:NAME"), an OIDC caller ("oidc:NAME") or a local user (a bare user name, which holds no colon).
# Entries written before actors were qualified name OIDC callers bare: they read as "user".
ACTOR_VIA = ("CASE WHEN actor = 'system' THEN 'system' WHEN actor LIKE 'token:%' THEN 'token' "
             "WHEN actor LIKE 'oidc:%' THEN 'oidc' ELSE 'user' END AS actor_via")


async def history(conn: Any, *, incident_id: int | None = None, alert_id: int | None = None,
                  limit: int = 1000) -> list[dict[str, Any]]:
    """Audit entries of an incident (including its alerts') or of one alert, oldest first."""
    rows = await conn.fetch(
        "SELECT id, ts, incident_id, alert_id, action, actor, " + ACTOR_VIA + ", note, detail FROM alert_events "
        "WHERE ($1::bigint IS NULL OR incident_id = $1) AND ($2::bigint IS NULL OR alert_id = $2) "
        "ORDER BY ts, id LIMIT $3", incident_id, alert_id, limit)
    return [_parse(r, "detail") for r in rows]


async def history_page(conn: Any, *, incident_id: int | None = None, alert_id: int | None = None,
                       limit: int = 1000, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Audit entries of an incident or alert: the ``limit`` before the newest ``offset`` ones, oldest first (a
    timeline's latest page, then older ones), and how many there are in all."""
    where = "($1::bigint IS NULL OR incident_id = $1) AND ($2::bigint IS NULL OR alert_id = $2)"
    rows = await conn.fetch(
        "SELECT * FROM (SELECT id, ts, incident_id, alert_id, action, actor, " + ACTOR_VIA + ", note, detail "
        f"FROM alert_events WHERE {where} ORDER BY ts DESC, id DESC LIMIT $3 OFFSET $4) e ORDER BY ts, id",
        incident_id, alert_id, limit, offset)
    entries = [_parse(r, "detail") for r in rows]
    if offset == 0 and len(entries) < limit:
        return entries, len(entries)
    return entries, int(await conn.fetchval(f"SELECT count(*) FROM alert_events WHERE {where}", incident_id,
                                            alert_id))


# --- silences ------------------------------------------------------------------------------------------

async def list_silences(conn: Any, include_expired: bool = False, now: datetime | None = None,
                        limit: int | None = None) -> list[dict[str, Any]]:
    """Silences, newest first (``limit`` None: all, as the engine reads them)."""
    rows = await conn.fetch(
        "SELECT id, matchers, starts_at, ends_at, reason, author, created_at, deleted_at FROM silences "
        "WHERE $1 OR (deleted_at IS NULL AND ends_at > coalesce($2, now())) ORDER BY starts_at DESC, id DESC LIMIT $3",
        include_expired, now, limit)
    return [_parse(r, "matchers") for r in rows]


async def create_silence(conn: Any, matchers: dict[str, str], starts_at: datetime, ends_at: datetime, reason: str,
                         author: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        "INSERT INTO silences (matchers, starts_at, ends_at, reason, author) VALUES ($1::jsonb, $2, $3, $4, $5) "
        "RETURNING id, matchers, starts_at, ends_at, reason, author, created_at, deleted_at",
        _json(matchers), starts_at, ends_at, reason, author)
    return _parse(row, "matchers")


async def update_silence(conn: Any, silence_id: int, ends_at: datetime | None, reason: str | None) -> bool:
    status = await conn.execute(
        "UPDATE silences SET ends_at = coalesce($2, ends_at), reason = coalesce($3, reason) "
        "WHERE id = $1 AND deleted_at IS NULL", silence_id, ends_at, reason)
    return str(status).endswith(" 1")


async def delete_silence(conn: Any, silence_id: int) -> bool:
    status = await conn.execute("UPDATE silences SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL",
                                silence_id)
    return str(status).endswith(" 1")


# --- roster and policies -------------------------------------------------------------------------------

async def list_officers(conn: Any, limit: int | None = None) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch("SELECT id, name, email, phone, active FROM officers ORDER BY id "
                                              "LIMIT $1", limit)]


async def upsert_officer(conn: Any, officer: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO officers (id, name, email, phone, active) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE "
        "SET name = excluded.name, email = excluded.email, phone = excluded.phone, active = excluded.active",
        officer["id"], officer["name"], officer.get("email"), officer.get("phone"), officer.get("active", True))


async def delete_officer(conn: Any, officer_id: str) -> bool:
    return str(await conn.execute("DELETE FROM officers WHERE id = $1", officer_id)).endswith(" 1")


async def list_shifts(conn: Any, since: datetime | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT id, officer_id, level, starts_at, ends_at FROM shifts "
                            "WHERE $1::timestamptz IS NULL OR ends_at > $1 ORDER BY starts_at, id LIMIT $2", since,
                            limit)
    return [dict(r) for r in rows]


async def create_shift(conn: Any, officer_id: str, level: int, starts_at: datetime,
                       ends_at: datetime) -> dict[str, Any]:
    row = await conn.fetchrow("INSERT INTO shifts (officer_id, level, starts_at, ends_at) VALUES ($1, $2, $3, $4) "
                              "RETURNING id, officer_id, level, starts_at, ends_at", officer_id, level, starts_at,
                              ends_at)
    return dict(row)


async def delete_shift(conn: Any, shift_id: int) -> bool:
    return str(await conn.execute("DELETE FROM shifts WHERE id = $1", shift_id)).endswith(" 1")


async def list_policies(conn: Any, limit: int | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT id, name, min_severity, steps, repeat, channels FROM escalation_policies "
                            "ORDER BY id LIMIT $1", limit)
    return [_parse(r, "steps", "channels") for r in rows]


async def upsert_policy(conn: Any, policy: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO escalation_policies (id, name, min_severity, steps, repeat, channels) "
        "VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb) ON CONFLICT (id) DO UPDATE SET name = excluded.name, "
        "min_severity = excluded.min_severity, steps = excluded.steps, repeat = excluded.repeat, "
        "channels = excluded.channels",
        policy["id"], policy["name"], policy["min_severity"], _json(policy["steps"]), policy.get("repeat", 0),
        _json(policy.get("channels", ["email", "webhook"])))


async def delete_policy(conn: Any, policy_id: str) -> bool:
    return str(await conn.execute("DELETE FROM escalation_policies WHERE id = $1", policy_id)).endswith(" 1")
