"""The device registry's kinds: claiming a new device's kind, reading known ones (see ingest/kinds.py).

A device's kind is the ``devices.kind`` of its row, written once by the first transaction that inserts the row and
never changed by the ingest (the registry upsert leaves it alone). The database is the one judge when two ingest
processes see a new id under two kinds at once: the second insert waits for the first to commit, finds its row
and reads its kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

_CLAIM = (
    "INSERT INTO devices (device_id, kind, first_seen, last_seen) "
    "SELECT i, k, f, f FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(i, k, f) "
    "ORDER BY i ON CONFLICT (device_id) DO NOTHING")
_KINDS = "SELECT device_id, kind FROM devices WHERE device_id = ANY($1::text[])"


async def claim_kinds(conn: Any, claims: Mapping[str, tuple[str, datetime]]) -> dict[str, str]:
    """Register each device of ``claims`` (device id -> (kind, first seen)) that has no row yet under that kind,
    and return the registry's kind of every one of them. Call it inside the transaction that stores their rows:
    a rollback takes the claim with it.

    Two statements, not one: an ``INSERT ... ON CONFLICT DO NOTHING`` that met a row committed by another
    transaction after this statement began cannot read that row in the same statement (its snapshot predates it);
    the ``SELECT`` after it, in READ COMMITTED, does."""
    ids = sorted(claims)  # rows locked in one order by every writer (as the registry upsert does)
    await conn.execute(_CLAIM, ids, [claims[i][0] for i in ids], [claims[i][1] for i in ids])
    return {r["device_id"]: r["kind"] for r in await conn.fetch(_KINDS, ids)}


async def set_kind(conn: Any, device_ids: Sequence[str], kind: str) -> dict[str, str]:
    """Give the registry's devices ``device_ids`` the kind ``kind`` (an administrator's decision); returns the kind
    each one found had before (ids without a row are left out)."""
    rows = await conn.fetch(
        "WITH old AS (SELECT device_id, kind FROM devices WHERE device_id = ANY($1::text[]) ORDER BY device_id "
        "FOR UPDATE) UPDATE devices d SET kind = $2 FROM old WHERE d.device_id = old.device_id "
        "RETURNING d.device_id, old.kind", list(device_ids), kind)
    return {r["device_id"]: r["kind"] for r in rows}


async def device_kinds(conn: Any, device_ids: Sequence[str] | None = None) -> dict[str, str]:
    """The registry's kind of each of ``device_ids`` that has a row (None: of every device)."""
    if device_ids is None:
        rows = await conn.fetch("SELECT device_id, kind FROM devices")
    else:
        rows = await conn.fetch(_KINDS, list(device_ids))
    return {r["device_id"]: r["kind"] for r in rows}
