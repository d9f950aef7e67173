"""The write path: one batch of rows, one transaction, idempotent under redelivery.

Every insert is ``ON CONFLICT DO NOTHING`` against a natural key (device, metric, ts) so a message the
broker redelivers after a crash adds nothing. Rows arrive as plain tuples so this module knows SQL
and columns, and nothing of MQTT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

TelemetryRow = tuple[datetime, str, str, float, int | None]
StatusRow = tuple[datetime, str, str, str | None, datetime]
EventRow = tuple[datetime, str, str, str, str, datetime]
SnapshotRow = tuple[str, bytes, datetime, datetime, int, int, int, bytes]
QuarantineRow = tuple[datetime, str, str, str, int, bytes, int, bytes]
DeviceRow = tuple[str, str, datetime, datetime, float | None, float | None, str | None, str | None,
                  datetime | None, int | None]

WriteMethod = Literal["copy", "unnest"]


@dataclass(slots=True)
class BatchRows:
    """Rows for one transaction. ``snapshots`` and ``devices`` must hold one row per key."""

    telemetry: list[TelemetryRow] = field(default_factory=list)
    status: list[StatusRow] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    snapshots: list[SnapshotRow] = field(default_factory=list)
    quarantine: list[QuarantineRow] = field(default_factory=list)
    devices: list[DeviceRow] = field(default_factory=list)


_TELEMETRY_UNNEST = (
    "INSERT INTO telemetry (ts, device_id, metric, value, seq) "
    "SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::float8[], $5::int8[]) "
    "ON CONFLICT DO NOTHING")
_TELEMETRY_FROM_STAGE = (
    "INSERT INTO telemetry (ts, device_id, metric, value, seq) "
    "SELECT ts, device_id, metric, value, seq FROM telemetry_stage ON CONFLICT DO NOTHING")
_STATUS = (
    "INSERT INTO device_status (ts, device_id, state, reason, received_at) "
    "SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) "
    "ON CONFLICT DO NOTHING")
_EVENTS = (
    "INSERT INTO device_events (ts, device_id, type, severity, detail, received_at) "
    "SELECT t, d, ty, s, x::jsonb, r FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], "
    "$5::text[], $6::timestamptz[]) AS u(t, d, ty, s, x, r) ON CONFLICT DO NOTHING")
_SNAPSHOTS = (
    "INSERT INTO snapshots AS s (device_id, sha256, first_seen, last_seen, width, height, size, jpeg) "
    "SELECT * FROM unnest($1::text[], $2::bytea[], $3::timestamptz[], $4::timestamptz[], $5::int4[], "
    "$6::int4[], $7::int4[], $8::bytea[]) "
    "ON CONFLICT (device_id, sha256) DO UPDATE SET "
    "first_seen = least(s.first_seen, excluded.first_seen), last_seen = greatest(s.last_seen, excluded.last_seen)")
_QUARANTINE = (
    "INSERT INTO quarantine (received_at, topic, reason, detail, item_index, payload, payload_size, "
    "payload_sha256) SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::int4[], "
    "$6::bytea[], $7::int4[], $8::bytea[]) ON CONFLICT DO NOTHING")
# A status without a device timestamp (state_ts NULL: a replayed retained message) only fills a gap; a
# timestamped one wins when it is not older than what the registry holds.
_NEWER_STATE = (
    "(excluded.state <> 'unknown' AND ((excluded.state_ts IS NOT NULL AND "
    "(d.state_ts IS NULL OR excluded.state_ts >= d.state_ts)) OR (excluded.state_ts IS NULL AND d.state = 'unknown')))")
_DEVICES = (
    "INSERT INTO devices AS d (device_id, kind, first_seen, last_seen, lat, lon, state, state_reason, "
    "state_ts, last_seq) "
    "SELECT i, k, f, l, la, lo, coalesce(st, 'unknown'), sr, sts, sq FROM unnest($1::text[], $2::text[], "
    "$3::timestamptz[], $4::timestamptz[], $5::float8[], $6::float8[], $7::text[], $8::text[], "
    "$9::timestamptz[], $10::int8[]) AS u(i, k, f, l, la, lo, st, sr, sts, sq) "
    "ON CONFLICT (device_id) DO UPDATE SET "
    "first_seen = least(d.first_seen, excluded.first_seen), "
    "last_seen = greatest(d.last_seen, excluded.last_seen), "
    "lat = coalesce(excluded.lat, d.lat), lon = coalesce(excluded.lon, d.lon), "
    "last_seq = coalesce(excluded.last_seq, d.last_seq), "
    f"state = CASE WHEN {_NEWER_STATE} THEN excluded.state ELSE d.state END, "
    f"state_reason = CASE WHEN {_NEWER_STATE} THEN excluded.state_reason ELSE d.state_reason END, "
    f"state_ts = CASE WHEN {_NEWER_STATE} THEN excluded.state_ts ELSE d.state_ts END")


async def write_batch(conn: Any, rows: BatchRows, method: WriteMethod = "copy") -> None:
    """Write every row of ``rows`` in one transaction (commits on return, rolls back on error)."""
    async with conn.transaction():
        if rows.telemetry:
            if method == "copy":
                await conn.copy_records_to_table("telemetry_stage", records=rows.telemetry)
                await conn.execute(_TELEMETRY_FROM_STAGE)
            else:
                await conn.execute(_TELEMETRY_UNNEST, *_columns(rows.telemetry, 5))
        if rows.status:
            await conn.execute(_STATUS, *_columns(rows.status, 5))
        if rows.events:
            await conn.execute(_EVENTS, *_columns(rows.events, 6))
        if rows.snapshots:
            await conn.execute(_SNAPSHOTS, *_columns(rows.snapshots, 8))
        if rows.quarantine:
            await conn.execute(_QUARANTINE, *_columns(rows.quarantine, 8))
        if rows.devices:
            await conn.execute(_DEVICES, *_columns(rows.devices, 10))


def _columns(rows: Sequence[Any], width: int) -> list[list[Any]]:
    """Transpose rows into the column arrays ``unnest`` takes."""
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


LatestRow = tuple[str, str, datetime, float]
# The newest rows go as one JSON array of rows: four arrays of ~36,000 elements each (a province's keys after
# two seconds at full drain) cost the ingest worker ~100 ms per write (building the rows and columns, and
# asyncpg checks every array element against collections.abc), orjson's one document ~13 ms; the database's
# share grows by about a fifth (it parses the document). Rows are in key order, so two workers carrying one
# device lock its rows in one order; an older or redelivered reading changes nothing.
_LATEST = (
    "INSERT INTO telemetry_latest AS l (device_id, metric, ts, value) "
    "SELECT r->>1, r->>2, (r->>0)::timestamptz, (r->>3)::float8 FROM jsonb_array_elements($1::jsonb) AS r "
    "ON CONFLICT (device_id, metric) DO UPDATE SET ts = excluded.ts, value = excluded.value "
    "WHERE excluded.ts > l.ts")


async def write_latest(conn: Any, newest: Mapping[str, Mapping[str, TelemetryRow]]) -> None:
    """Keep the newest value of each (device, metric) in ``telemetry_latest``: ``newest`` maps device -> metric ->
    the newest committed telemetry row ``(ts, device, metric, value, seq)`` of that key. Derived from committed
    readings, written apart from them (see :class:`ingest.latest.LatestValues`)."""
    rows = [held[metric] for device in sorted(newest) for held in (newest[device],) for metric in sorted(held)]
    if rows:
        await conn.execute(_LATEST, orjson.dumps(rows).decode())


FindingRow = tuple[datetime, str, str, str, float, str, str]
_FINDINGS = (
    "INSERT INTO findings (ts, device_id, series, type, score, explanation, detail) "
    "SELECT t, d, s, ty, sc, e, x::jsonb FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], "
    "$5::float8[], $6::text[], $7::text[]) AS u(t, d, s, ty, sc, e, x) ON CONFLICT DO NOTHING")


async def write_findings(conn: Any, rows: list[FindingRow]) -> None:
    """Store findings (a finding seen again, e.g. after a replay, is stored once)."""
    if rows:
        await conn.execute(_FINDINGS, *_columns(rows, 7))


_SAVE_STATE = ("INSERT INTO analytics_state (name, updated_at, state) VALUES ($1, now(), $2) "
               "ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at, state = excluded.state")


async def save_state(conn: Any, name: str, state: bytes) -> None:
    """Keep the latest serialised state of a detector under ``name``."""
    await conn.execute(_SAVE_STATE, name, state)


async def load_state(conn: Any, name: str) -> bytes | None:
    """The saved state of a detector, or None."""
    value = await conn.fetchval("SELECT state FROM analytics_state WHERE name = $1", name)
    return bytes(value) if value is not None else None


async def save_states(conn: Any, states: Sequence[tuple[str, bytes]]) -> None:
    """Keep the latest serialised state of many detectors at once (``(name, state)``)."""
    if states:
        await conn.executemany(_SAVE_STATE, states)


async def load_states(conn: Any, prefix: str, max_age_s: float) -> list[tuple[str, bytes]]:
    """Saved states whose name starts with ``prefix`` and that were saved within ``max_age_s`` seconds."""
    rows = await conn.fetch(
        "SELECT name, state FROM analytics_state WHERE left(name, length($1)) = $1 "
        "AND updated_at > now() - make_interval(secs => $2)", prefix, max_age_s)
    return [(r["name"], bytes(r["state"])) for r in rows]


_SAVE_SERIES = (
    "INSERT INTO series_state AS s (scope, device_id, updated_at, state) "
    "SELECT $1, d, now(), x FROM unnest($2::text[], $3::bytea[]) AS u(d, x) "
    "ON CONFLICT (scope, device_id) DO UPDATE SET updated_at = excluded.updated_at, state = excluded.state")


async def save_series_states(conn: Any, scope: str, states: Sequence[tuple[str, bytes]]) -> None:
    """Keep the latest learned state of each device in ``states`` (``(device_id, state)``) under ``scope``.

    One statement for the whole batch; call it inside the leader's fenced transaction.
    """
    if states:
        # in device order, so two writers (a fenced-out leader's last try, the new one) lock rows alike
        await conn.execute(_SAVE_SERIES, scope, *_columns(sorted(states), 2))


async def load_series_states(conn: Any, scope: str) -> list[tuple[str, bytes]]:
    """Every device's saved state under ``scope``."""
    rows = await conn.fetch("SELECT device_id, state FROM series_state WHERE scope = $1", scope)
    return [(r["device_id"], bytes(r["state"])) for r in rows]


async def write_districts(conn: Any, rows: Sequence[tuple[str, str | None]]) -> None:
    """Record the district the service placed each device in (``(device_id, district)``)."""
    if rows:
        rows = sorted(rows)
        async with conn.transaction():
            # Lock the rows in device order first, as the ingest's writes do (they sort too): an UPDATE ... FROM
            # locks in its join's order, and the two deadlocked under a province's load.
            await conn.execute("SELECT 1 FROM devices WHERE device_id = ANY($1::text[]) ORDER BY device_id "
                               "FOR UPDATE", [r[0] for r in rows])
            await conn.execute(
                "UPDATE devices d SET district = u.district FROM unnest($1::text[], $2::text[]) AS u(device_id, "
                "district) WHERE d.device_id = u.device_id AND d.district IS DISTINCT FROM u.district",
                *_columns(rows, 2))
