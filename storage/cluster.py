"""SQL of the cluster (migration 0008): the brain's lease and fencing epoch, members, handed-over actions,
shared rate limits, id reservations and the NOTIFY channels replicas listen on.

Lease times are the database's clock (``now()``), never a process's own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

#: NOTIFY channels: changed incidents/alerts (ids), new findings (rows), actions waiting for the leader.
CHANNEL_ALERTS = "ioc_alerts"
CHANNEL_FINDINGS = "ioc_findings"
CHANNEL_ACTIONS = "ioc_actions"
CHANNEL_CONFIG = "ioc_alert_config"  # silences, roster or policies changed: the leader re-reads them
CHANNEL_HEALTH = "ioc_camera_health"  # camera health labels that changed (the walls of other replicas)
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD = 7900


class FencedError(RuntimeError):
    """This process no longer holds the lease it is writing under (a newer leader may exist)."""


def _json(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


# --- lease ---------------------------------------------------------------------------------------------

async def try_acquire(conn: Any, name: str, holder: str, ttl_s: float) -> int | None:
    """Take the lease if it is free or expired; returns the new epoch, or None if someone else holds it."""
    await conn.execute("INSERT INTO cluster_lease (name) VALUES ($1) ON CONFLICT DO NOTHING", name)
    return await conn.fetchval(
        "UPDATE cluster_lease SET holder = $2, epoch = epoch + 1, acquired_at = now(), renewed_at = now(), "
        "expires_at = now() + make_interval(secs => $3) "
        "WHERE name = $1 AND (holder IS NULL OR expires_at IS NULL OR expires_at < now()) RETURNING epoch",
        name, holder, ttl_s)


async def renew(conn: Any, name: str, holder: str, epoch: int, ttl_s: float) -> bool:
    """Extend our lease; False if it is no longer ours (taken over: a new epoch, or released).

    A lease that expired while nobody took it over is still ours to renew: no other epoch exists, so
    nothing was written under another leader meanwhile (a leader whose event loop was starved for a
    while keeps leading instead of throwing its unsaved changes away).
    """
    result = await conn.execute(
        "UPDATE cluster_lease SET renewed_at = now(), expires_at = now() + make_interval(secs => $4) "
        "WHERE name = $1 AND holder = $2 AND epoch = $3", name, holder, epoch, ttl_s)
    return bool(result.endswith(" 1"))


async def release(conn: Any, name: str, holder: str, epoch: int) -> bool:
    """Give the lease up at once (clean shutdown): a standby takes over on its next try."""
    result = await conn.execute(
        "UPDATE cluster_lease SET holder = NULL, expires_at = now() WHERE name = $1 AND holder = $2 AND epoch = $3",
        name, holder, epoch)
    return bool(result.endswith(" 1"))


async def check_epoch(conn: Any, name: str, holder: str, epoch: int) -> None:
    """The fence: call first inside a write transaction of a stateful stage.

    The row lock (FOR SHARE) makes a takeover wait until this transaction ends, so the write either
    commits before the new epoch exists or is refused here. (An expired lease nobody took over yet
    still passes: no write under another epoch can exist.)

    Raises:
        FencedError: the lease is not ours with this epoch any more.
    """
    # A leader paused inside this transaction must not hold the row lock (and so the takeover) for long:
    # the server ends a transaction left idle this long.
    await conn.execute("SET LOCAL idle_in_transaction_session_timeout = '5s'")
    ok = await conn.fetchval(
        "SELECT holder = $2 AND epoch = $3 FROM cluster_lease WHERE name = $1 FOR SHARE",
        name, holder, epoch)
    if not ok:
        raise FencedError(f"lease {name!r} epoch {epoch} is no longer held by {holder}")


async def lease_row(conn: Any, name: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT name, holder, epoch, acquired_at, renewed_at, expires_at, now() AS db_now, "
        "extract(epoch FROM now() - acquired_at)::float8 AS age_s, expires_at > now() AS valid "
        "FROM cluster_lease WHERE name = $1", name)
    return dict(row) if row else None


# --- partition leases (ioc/partition/worker.py) ---------------------------------------------------------
# Rows of the same table: ``partition:<stream>:<N>`` (owner, epoch) and ``member:<stream>:<holder>``
# (a worker's heartbeat, so workers count each other; a paused worker stops counting when it expires).

async def take_free(conn: Any, names: list[str], holder: str, ttl_s: float, limit: int) -> dict[str, int]:
    """Take up to ``limit`` of the named leases that are free or expired; returns name -> new epoch.

    Rows locked by a write in flight (a paused former owner's open transaction) are skipped, not waited for.
    """
    if limit <= 0 or not names:
        return {}
    await conn.execute("INSERT INTO cluster_lease (name) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING", names)
    rows = await conn.fetch(
        "WITH free AS (SELECT name FROM cluster_lease WHERE name = ANY($1::text[]) AND (holder IS NULL OR "
        "expires_at IS NULL OR expires_at < now()) ORDER BY random() LIMIT $4 FOR UPDATE SKIP LOCKED) "
        "UPDATE cluster_lease l SET holder = $2, epoch = l.epoch + 1, acquired_at = now(), renewed_at = now(), "
        "expires_at = now() + make_interval(secs => $3) FROM free WHERE l.name = free.name RETURNING l.name, l.epoch",
        names, holder, ttl_s, limit)
    return {r["name"]: int(r["epoch"]) for r in rows}


async def renew_held(conn: Any, holder: str, held: dict[str, int], ttl_s: float) -> set[str]:
    """Extend the leases we hold (name -> epoch); returns the names still ours (the others were taken over)."""
    if not held:
        return set()
    rows = await conn.fetch(
        "UPDATE cluster_lease l SET renewed_at = now(), expires_at = now() + make_interval(secs => $4) "
        "FROM unnest($1::text[], $2::int8[]) AS o(name, epoch) WHERE l.name = o.name AND l.holder = $3 "
        "AND l.epoch = o.epoch RETURNING l.name", list(held), list(held.values()), holder, ttl_s)
    return {r["name"] for r in rows}


async def member_beat(conn: Any, prefix: str, holder: str, ttl_s: float) -> int:
    """Refresh this worker's member row under ``prefix``; returns how many members are alive (itself included)."""
    await conn.execute(
        "INSERT INTO cluster_lease (name, holder, epoch, acquired_at, renewed_at, expires_at) "
        "VALUES ($1 || $2, $2, 0, now(), now(), now() + make_interval(secs => $3)) ON CONFLICT (name) DO UPDATE "
        "SET renewed_at = now(), expires_at = excluded.expires_at", prefix, holder, ttl_s)
    # members gone for an hour are forgotten
    await conn.execute("DELETE FROM cluster_lease WHERE left(name, length($1)) = $1 AND "
                       "expires_at < now() - interval '1 hour'", prefix)
    return int(await conn.fetchval("SELECT count(*) FROM cluster_lease WHERE left(name, length($1)) = $1 "
                                   "AND expires_at > now()", prefix))


async def member_leave(conn: Any, prefix: str, holder: str) -> None:
    await conn.execute("DELETE FROM cluster_lease WHERE name = $1 || $2", prefix, holder)


# --- members -------------------------------------------------------------------------------------------

async def heartbeat(conn: Any, process_id: str, role: str, host: str, pid: int, started_at: datetime,
                    doing: str, input_lag_s: float | None, detail: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO cluster_members (process_id, role, host, pid, started_at, heartbeat_at, doing, input_lag_s, "
        "detail) VALUES ($1, $2, $3, $4, $5, now(), $6, $7, $8::jsonb) ON CONFLICT (process_id) DO UPDATE SET "
        "heartbeat_at = now(), doing = excluded.doing, input_lag_s = excluded.input_lag_s, detail = excluded.detail",
        process_id, role, host, pid, started_at, doing, input_lag_s, _json(detail))


async def leave(conn: Any, process_id: str) -> None:
    await conn.execute("DELETE FROM cluster_members WHERE process_id = $1", process_id)


async def members(conn: Any, within_s: float) -> list[dict[str, Any]]:
    """Processes whose heartbeat is younger than ``within_s`` (older ones are forgotten here and pruned)."""
    await conn.execute("DELETE FROM cluster_members WHERE heartbeat_at < now() - make_interval(secs => $1)",
                       within_s * 20)
    rows = await conn.fetch(
        "SELECT process_id, role, host, pid, started_at, heartbeat_at, doing, input_lag_s, detail, "
        "extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s FROM cluster_members "
        "WHERE heartbeat_at >= now() - make_interval(secs => $1) ORDER BY role, started_at", within_s)
    out = []
    for r in rows:
        row = dict(r)
        if isinstance(row.get("detail"), str):
            row["detail"] = orjson.loads(row["detail"])
        out.append(row)
    return out


# --- ids -----------------------------------------------------------------------------------------------

async def reserve_ids(conn: Any, sequence: str, count: int) -> list[int]:
    """``count`` fresh ids from a sequence (``alerts_id_seq``, ``incidents_id_seq``); gaps are harmless."""
    if count <= 0:
        return []
    if sequence not in ("alerts_id_seq", "incidents_id_seq"):
        raise ValueError(f"unknown sequence {sequence!r}")
    rows = await conn.fetch(f"SELECT nextval('{sequence}') AS id FROM generate_series(1, $1)", count)
    return sorted(int(r["id"]) for r in rows)


# --- notifications between replicas --------------------------------------------------------------------

async def notify(conn: Any, channel: str, doc: dict[str, Any]) -> None:
    """NOTIFY ``channel`` with a JSON document (delivered when the caller's transaction commits)."""
    await conn.execute("SELECT pg_notify($1, $2)", channel, _json(doc))


async def notify_changes(conn: Any, origin: str, incident_ids: list[int], alert_ids: list[int]) -> None:
    """Tell every replica which incidents and alerts changed; too many ids at once become ``all``."""
    doc: dict[str, Any] = {"origin": origin, "incidents": sorted(incident_ids), "alerts": sorted(alert_ids)}
    if len(_json(doc)) > MAX_PAYLOAD:
        doc = {"origin": origin, "all": True}
    await notify(conn, CHANNEL_ALERTS, doc)


# --- actions -------------------------------------------------------------------------------------------

async def submit_action(conn: Any, origin: str, incident_id: int, action: str, actor: str, note: str | None,
                        assignee: str | None, epoch: int | None = None) -> int:
    """Queue an officer's action; returns its id.

    Without ``epoch`` the leader is woken (NOTIFY) to take it; with ``epoch`` the action is recorded as already
    taken by the leader of that epoch (the leader's own process applies it at once).
    """
    async with conn.transaction():
        action_id = await conn.fetchval(
            "INSERT INTO cluster_actions (origin, incident_id, action, actor, note, assignee, epoch) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id", origin, incident_id, action, actor, note, assignee,
            epoch)
        if epoch is None:
            await notify(conn, CHANNEL_ACTIONS, {"id": action_id})
    return int(action_id)


async def action_result(conn: Any, action_id: int) -> dict[str, Any] | None:
    """The action's row once it is done or failed, else None."""
    row = await conn.fetchrow("SELECT status, result, error, epoch FROM cluster_actions WHERE id = $1 AND "
                              "status <> 'pending'", action_id)
    if row is None:
        return None
    out = dict(row)
    if isinstance(out.get("result"), str):
        out["result"] = orjson.loads(out["result"])
    return out


async def pending_actions(conn: Any, limit: int = 100) -> list[dict[str, Any]]:
    """Actions not finished yet, oldest first, with the epoch that took them (None: nobody yet) and their age."""
    rows = await conn.fetch(
        "SELECT id, incident_id, action, actor, note, assignee, epoch, "
        "extract(epoch FROM now() - created_at)::float8 AS age_s FROM cluster_actions WHERE status = 'pending' "
        "ORDER BY id LIMIT $1", limit)
    return [dict(r) for r in rows]


async def claim_action(conn: Any, action_id: int, epoch: int) -> bool:
    """The leader of ``epoch`` takes a pending action (call inside its fenced transaction).

    False when it is finished, or already taken by this epoch. An action taken by an older epoch whose
    leader died before storing it is taken again: its effect and its result are stored in one transaction,
    so an unfinished action has no stored effect and is applied once by whoever finishes it.
    """
    done = await conn.execute(
        "UPDATE cluster_actions SET epoch = $2 WHERE id = $1 AND status = 'pending' "
        "AND (epoch IS NULL OR epoch < $2)", action_id, epoch)
    return bool(done.endswith(" 1"))


async def fail_unclaimed(conn: Any, action_id: int, error: str) -> bool:
    """Give up an action no leader has taken (the replica's timeout); False if a leader took or finished it."""
    done = await conn.execute(
        "UPDATE cluster_actions SET status = 'failed', result = $3::jsonb, error = $2, done_at = now() "
        "WHERE id = $1 AND status = 'pending' AND epoch IS NULL", action_id, error, _json({"status": 503}))
    return bool(done.endswith(" 1"))


async def finish_action(conn: Any, action_id: int, epoch: int | None, result: dict[str, Any] | None,
                        error: str | None) -> bool:
    """Record the outcome (once: only a pending action is finished)."""
    status = "failed" if error else "done"
    done = await conn.execute(
        "UPDATE cluster_actions SET status = $2, epoch = $3, result = $4::jsonb, error = $5, done_at = now() "
        "WHERE id = $1 AND status = 'pending'", action_id, status, epoch, _json(result) if result else None, error)
    return bool(done.endswith(" 1"))


async def finish_actions(conn: Any, done: dict[int, tuple[int | None, dict[str, Any]]]) -> None:
    """Record applied actions as done (inside the transaction that stores their effect)."""
    if done:
        await conn.executemany(
            "UPDATE cluster_actions SET status = 'done', epoch = $2, result = $3::jsonb, error = NULL, "
            "done_at = now() WHERE id = $1 AND status = 'pending'",
            [(action_id, epoch, _json(result)) for action_id, (epoch, result) in done.items()])


# --- shared rate limits --------------------------------------------------------------------------------

async def take_token(conn: Any, channel: str, target: str, rate_per_s: float, burst: float) -> float:
    """Take a token from the shared bucket of (channel, target): 0.0 when granted, else seconds to wait."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO notify_rate (channel, target, tokens, updated_at) VALUES ($1, $2, $3, now()) "
            "ON CONFLICT DO NOTHING", channel, target, burst)
        tokens = await conn.fetchval(
            "SELECT least($3, tokens + greatest(0, extract(epoch FROM now() - updated_at)) * $4) FROM notify_rate "
            "WHERE channel = $1 AND target = $2 FOR UPDATE", channel, target, burst, rate_per_s)
        granted = tokens >= 1.0
        await conn.execute(
            "UPDATE notify_rate SET tokens = $3, updated_at = greatest(updated_at, now()) "
            "WHERE channel = $1 AND target = $2", channel, target, tokens - 1.0 if granted else tokens)
    return 0.0 if granted else (1.0 - float(tokens)) / rate_per_s
