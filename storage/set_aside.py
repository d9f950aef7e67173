"""SQL of the set-aside table: change sets a stage could not store because the data was refused."""

from __future__ import annotations

import json
from typing import Any

import orjson

from ingest.text import clean_text


def encode_payload(doc: Any) -> bytes:
    """The piece as JSON bytes, whatever it holds (bytea keeps even what text columns refuse)."""
    try:
        return orjson.dumps(doc, default=str)
    except (TypeError, orjson.JSONEncodeError):  # lone surrogates, 65-bit integers: the stdlib escapes them
        return json.dumps(doc, default=str).encode()


async def set_aside(conn: Any, stage: str, what: str, error: BaseException | str, attempts: int, doc: Any) -> int:
    """Keep one refused piece with its error; returns its id."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return int(await conn.fetchval(
        "INSERT INTO set_aside (stage, what, error, attempts, payload) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        stage, clean_text(what, limit=200), clean_text(text, limit=4000), attempts, encode_payload(doc)))


async def list_set_aside(conn: Any, limit: int = 100, stage: str | None = None) -> list[dict[str, Any]]:
    """Newest first; the payload as text (it is JSON)."""
    rows = await conn.fetch(
        "SELECT id, ts, stage, what, error, attempts, payload FROM set_aside "
        "WHERE ($1::text IS NULL OR stage = $1) ORDER BY id DESC LIMIT $2", stage, limit)
    return [{**dict(r), "payload": bytes(r["payload"]).decode("utf-8", "replace")} for r in rows]
