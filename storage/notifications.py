"""The notification outbox (table ``notifications``): enqueue, claim, record outcomes, list.

The alert engine enqueues rows in the same transaction as the change they report; dispatchers claim
due rows with ``FOR UPDATE SKIP LOCKED`` and a lease (``next_attempt`` moved forward), so several
processes share the outbox and the claims of one that dies are retried when the lease ends. Delivery
is therefore at least once; receivers dedupe on the notification id. Every outcome guards on
``status = 'pending'`` so a row superseded meanwhile is never revived, and, given the dispatcher's
:data:`Claim`, on that claim still being the row's: a claim taken back (by the next leader, or after its
lease) leaves the row to its new claimant.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

logger = logging.getLogger(__name__)

STATUSES = ("pending", "sent", "failed", "dropped")
_COLS = ("id, created_at, incident_id, channel, target, reason, subject, body, status, attempts, next_attempt, "
         "last_error, sent_at")
#: Longest last_error kept; a receiver's error page must not bloat the table.
MAX_ERROR = 1000
#: A claim as its dispatcher knows it: (the claiming leader's epoch or None, the ``next_attempt`` the claim set).
#: Any later claim, release, retry or deferral of the row changes one of them.
Claim = tuple[int | None, datetime]
_CLAIMED = " AND claim_epoch IS NOT DISTINCT FROM ${}::int8 AND next_attempt = ${}::timestamptz"


def _claimed(claim: Claim | None, first: int) -> tuple[str, tuple[Any, ...]]:
    """The SQL condition "still under this claim" (nothing without a claim) with its parameters from ``$first``."""
    return ("", ()) if claim is None else (_CLAIMED.format(first, first + 1), claim)


@dataclass(slots=True)
class NotificationRow:
    """One notification to enqueue: ``body`` is the rendered webhook payload (it holds the text too)."""

    incident_id: int | None
    channel: str
    target: str
    reason: str
    subject: str
    body: dict[str, Any] = field(default_factory=dict)


def _decode(record: Any) -> dict[str, Any]:
    row = dict(record)
    if isinstance(row.get("body"), str):  # no jsonb codec on the pool: asyncpg hands back text
        row["body"] = json.loads(row["body"])
    return row


async def enqueue(conn: Any, rows: list[NotificationRow]) -> list[int]:
    """Insert pending notifications (due now); returns their ids in order. Joins the caller's transaction."""
    if not rows:
        return []
    records = await conn.fetch(
        "INSERT INTO notifications (incident_id, channel, target, reason, subject, body) "
        "SELECT i, c, t, r, s, b::jsonb FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], "
        "$6::text[]) AS u(i, c, t, r, s, b) RETURNING id",
        [r.incident_id for r in rows], [r.channel for r in rows], [r.target for r in rows],
        [r.reason for r in rows], [r.subject for r in rows],
        [json.dumps(r.body, ensure_ascii=False) for r in rows])
    # bigserial values are drawn in the order unnest yields the rows.
    return sorted(int(r["id"]) for r in records)


async def claim_due(conn: Any, now: datetime, limit: int, lease_s: float = 120.0,
                    epoch: int | None = None) -> list[dict[str, Any]]:
    """Claim up to ``limit`` pending rows due at ``now``, oldest due first, hiding them for ``lease_s``.

    Rows locked by another dispatcher's claim are skipped, not waited for. ``epoch`` is the claiming leader's
    (see :func:`release_stale_claims`).
    """
    records = await conn.fetch(
        f"UPDATE notifications n SET next_attempt = $3, claim_epoch = $4 FROM ("
        "SELECT id FROM notifications WHERE status = 'pending' AND next_attempt <= $1 "
        "ORDER BY next_attempt, id LIMIT $2 FOR UPDATE SKIP LOCKED) due "
        f"WHERE n.id = due.id RETURNING {', '.join('n.' + c.strip() for c in _COLS.split(','))}",
        now, limit, now + timedelta(seconds=lease_s), epoch)
    return sorted((_decode(r) for r in records), key=lambda r: r["id"])


async def release_stale_claims(conn: Any, epoch: int, now: datetime) -> int:
    """Make the pending rows claimed under an older leader's epoch due now; returns how many.

    A leader holding ``epoch`` is the only one that can claim any more (claims are fenced), so an older
    epoch's claim belongs to a leader that died or was fenced between its claim and the send: without this
    its pages would wait out the claim's lease. A paused old leader that wakes finds its claim gone (and its
    fence refusing) before it sends (:func:`still_claimed`); one that was already sending makes that page
    arrive twice under one notification id, which receivers drop (delivery is at least once).
    """
    result = await conn.execute(
        "UPDATE notifications SET next_attempt = $2, claim_epoch = NULL "
        "WHERE status = 'pending' AND claim_epoch < $1", epoch, now)
    return int(result.split()[-1])


async def still_claimed(conn: Any, notification_id: int, claim: Claim) -> bool:
    """True while the row is pending under ``claim`` (checked just before sending it)."""
    cond, args = _claimed(claim, 2)
    return bool(await conn.fetchval(
        f"SELECT true FROM notifications WHERE id = $1 AND status = 'pending'{cond}", notification_id, *args))


async def mark_sent(conn: Any, notification_id: int, now: datetime, claim: Claim | None = None) -> bool:
    """Record a successful attempt; False if the row was no longer pending (or no longer under ``claim``)."""
    cond, args = _claimed(claim, 3)
    result = await conn.execute(
        "UPDATE notifications SET status = 'sent', attempts = attempts + 1, sent_at = $2, last_error = NULL "
        f"WHERE id = $1 AND status = 'pending'{cond}", notification_id, now, *args)
    return bool(result.endswith(" 1"))


async def mark_retry(conn: Any, notification_id: int, next_attempt: datetime, error: str,
                     claim: Claim | None = None) -> bool:
    """Record a failed attempt and when to try again; False if the row was no longer pending (or under ``claim``)."""
    cond, args = _claimed(claim, 4)
    result = await conn.execute(
        "UPDATE notifications SET attempts = attempts + 1, next_attempt = $2, last_error = $3, claim_epoch = NULL "
        f"WHERE id = $1 AND status = 'pending'{cond}", notification_id, next_attempt, error[:MAX_ERROR], *args)
    return bool(result.endswith(" 1"))


async def mark_failed(conn: Any, notification_id: int, error: str, claim: Claim | None = None) -> bool:
    """Record a last failed attempt: the row stays, status 'failed', for operators to see."""
    cond, args = _claimed(claim, 3)
    result = await conn.execute(
        "UPDATE notifications SET status = 'failed', attempts = attempts + 1, last_error = $2 "
        f"WHERE id = $1 AND status = 'pending'{cond}", notification_id, error[:MAX_ERROR], *args)
    return bool(result.endswith(" 1"))


async def mark_dropped(conn: Any, notification_ids: list[int], reason: str) -> int:
    """Give up on pending rows without sending them (e.g. 'superseded'); returns how many."""
    result = await conn.execute(
        "UPDATE notifications SET status = 'dropped', last_error = $2 WHERE id = ANY($1::int8[]) "
        "AND status = 'pending'", notification_ids, reason[:MAX_ERROR])
    return int(result.split()[-1])


async def defer(conn: Any, notification_ids: list[int], next_attempt: datetime, claim: Claim | None = None) -> int:
    """Postpone pending rows (still under ``claim``) without counting an attempt (rate limited); returns how many."""
    cond, args = _claimed(claim, 3)
    result = await conn.execute(
        "UPDATE notifications SET next_attempt = $2, claim_epoch = NULL WHERE id = ANY($1::int8[]) "
        f"AND status = 'pending'{cond}",
        notification_ids, next_attempt, *args)
    return int(result.split()[-1])


async def supersede(conn: Any, channel: str, target: str, keep_after: int) -> int:
    """Collapse a storm to one waiting message per incident for one (channel, target).

    When more than ``keep_after`` rows are pending for the target, every pending row of an incident
    except its newest is marked 'dropped' with last_error 'superseded'. Rows without an incident are
    never collapsed. Returns how many rows were dropped.
    """
    waiting = await conn.fetchval(
        "SELECT count(*) FROM notifications WHERE status = 'pending' AND channel = $1 AND target = $2",
        channel, target)
    if waiting <= keep_after:
        return 0
    result = await conn.execute(
        "UPDATE notifications SET status = 'dropped', last_error = 'superseded' WHERE id IN ("
        "SELECT id FROM notifications WHERE id IN (SELECT id FROM ("
        "SELECT id, row_number() OVER (PARTITION BY incident_id ORDER BY id DESC) AS rn FROM notifications "
        "WHERE status = 'pending' AND channel = $1 AND target = $2 AND incident_id IS NOT NULL) w WHERE rn > 1) "
        "FOR UPDATE SKIP LOCKED) AND status = 'pending'", channel, target)
    return int(result.split()[-1])


async def list_notifications(conn: Any, limit: int = 100, status: str | None = None,
                             incident_id: int | None = None) -> list[dict[str, Any]]:
    """Newest notifications first, optionally of one status and/or one incident."""
    records = await conn.fetch(
        f"SELECT {_COLS} FROM notifications WHERE ($1::text IS NULL OR status = $1) "
        "AND ($2::int8 IS NULL OR incident_id = $2) ORDER BY created_at DESC, id DESC LIMIT $3",
        status, incident_id, limit)
    return [_decode(r) for r in records]


async def pending_count(conn: Any) -> int:
    """Notifications still waiting to be sent."""
    return int(await conn.fetchval("SELECT count(*) FROM notifications WHERE status = 'pending'"))
