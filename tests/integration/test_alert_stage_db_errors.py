"""The alert stage judges a failed store like the ingest writer (:func:`ingest.errors.judge`), on a real PostgreSQL.

Only SQLSTATE classes 22/23 blame the data at once. Any other unclear failure (a connection broken by a server
shutdown, asyncpg's protocol left in a state it reports as ``InternalClientError``) is first checked against the
database: while it does not answer, the change set is held and retried, never set aside; while it answers, such
a failure is retried a few times, then the piece that keeps causing it is set aside so later changes go on.
The failures are injected into the store function; the database is a private cluster, really stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

import storage.alerts
from ingest.errors import UNKNOWN_ERROR_RETRIES
from ingest.records import ParsedMessage, StatusUpdate
from ioc.alerts.config import AlertsConfig
from ioc.alerts.stage import AlertStage
from ioc.geo import City
from ioc.live.hub import LiveHub
from storage.config import StorageConfig
from storage.db import create_pool
from tests.conftest import create_database
from tests.support.services import PrivatePostgres, private_postgres

pytestmark = pytest.mark.integration

_BROKEN = "cannot switch to state 15; another operation (2) is in progress"


class BrokenProtocolError(Exception):
    """A client-side error no classifier knows."""


def _internal_client_error() -> Exception:
    return asyncpg.exceptions.InternalClientError(_BROKEN)


def _unknown_client_error() -> Exception:
    return BrokenProtocolError(f"connection broken mid-write: {_BROKEN}")


class FaultyStore:
    """Wraps ``storage.alerts.save_changes``: a write holding ``device``'s alert fails while ``failing``; with
    ``stop`` the first such write stops PostgreSQL (and waits until it is down) before it fails."""

    def __init__(self, device: str, make_error: Callable[[], Exception], stop: PrivatePostgres | None) -> None:
        self.device, self.make_error, self.stop = device, make_error, stop
        self.failing, self.calls = True, 0
        self.real = storage.alerts.save_changes

    async def __call__(self, conn: Any, incidents: list[dict[str, Any]], alerts: list[dict[str, Any]],
                       audit: list[Any]) -> None:
        if self.failing and any(a["device_id"] == self.device for a in alerts):
            self.calls += 1
            if self.stop is not None and self.calls == 1:
                await asyncio.to_thread(self.stop.stop)
            raise self.make_error()
        await self.real(conn, incidents, alerts, audit)


def _offline(stage: AlertStage, device: str, now: datetime) -> None:
    """A device goes offline; the steps past every hold fire its alert (kept unsaved for the next flush)."""
    stage.on_parsed(ParsedMessage([StatusUpdate(device, "bts", now, "offline", "power cut")], []))
    for k in range(0, 900, 30):
        stage.step(now + timedelta(seconds=k))


async def _rows(dsn: str, device: str) -> tuple[int, int]:
    """(alerts stored for ``device``, set-aside rows of the alert stage)."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return (int(await conn.fetchval("SELECT count(*) FROM alerts WHERE device_id = $1", device)),
                int(await conn.fetchval("SELECT count(*) FROM set_aside WHERE stage = 'alerts'")))
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _stage_on_private_postgres() -> AsyncIterator[tuple[AlertStage, PrivatePostgres, str]]:
    """An alert stage, loaded, on a database of a private PostgreSQL (which the test may stop): (stage, pg, dsn)."""
    with private_postgres() as pg:
        dsn = await create_database(pg.dsn)
        pool = await create_pool(dsn, StorageConfig(), max_size=2)
        try:
            city = City.load()
            stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig())
            await stage.load()
            yield stage, pg, dsn
        finally:
            await pool.close()


async def _flush_until_stored(stage: AlertStage) -> None:
    """Ticks of a database that came back: flush until nothing waits (at most 50, 0.1 s apart)."""
    for _ in range(50):
        await stage.flush()
        if not stage._unsaved:
            return
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("make_error", [_internal_client_error, _unknown_client_error],
                         ids=["internal-client-error", "unknown-client-error"])
async def test_a_client_error_while_postgres_is_stopped_is_held_and_stored_once_it_is_back(
        make_error: Callable[[], Exception], monkeypatch: pytest.MonkeyPatch) -> None:
    device = f"BTS-{uuid.uuid4().hex[:8]}"
    async with _stage_on_private_postgres() as (stage, pg, dsn):
        faults = FaultyStore(device, make_error, stop=pg)
        monkeypatch.setattr(storage.alerts, "save_changes", faults)
        _offline(stage, device, datetime.now(UTC))
        for _ in range(3):  # ticks of the outage: the first fails with the client error, then no connection
            await stage.flush()
        assert faults.calls == 1 and stage._unsaved, "the change set is held while the database is away"
        faults.failing = False
        await asyncio.to_thread(pg.start)
        await _flush_until_stored(stage)
        assert await _rows(dsn, device) == (1, 0), "the alert stored once the database is back, nothing set aside"
        assert stage.flush_failing_since is None


async def test_an_internal_client_error_while_postgres_answers_is_set_aside_after_its_retries(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A piece that keeps failing with an error that is no database error, while the database answers, is set
    aside after ``UNKNOWN_ERROR_RETRIES`` tries; a later change of another device is stored. Before, the piece was
    retried for ever (each try classed it transient again) and held every later change behind it."""
    poison, good = f"BTS-{uuid.uuid4().hex[:8]}", f"BTS-{uuid.uuid4().hex[:8]}"
    async with _stage_on_private_postgres() as (stage, _pg, dsn):
        faults = FaultyStore(poison, _internal_client_error, stop=None)
        monkeypatch.setattr(storage.alerts, "save_changes", faults)
        now = datetime.now(UTC)
        _offline(stage, poison, now)
        for _ in range(2 * UNKNOWN_ERROR_RETRIES + 2):
            await stage.flush()
            if not stage._unsaved:
                break
        assert not stage._unsaved, "the refused piece must not wait in front of later changes"
        _offline(stage, good, now + timedelta(seconds=900))
        await stage.flush()
        assert not stage._unsaved
        assert (await _rows(dsn, good))[0] == 1 and (await _rows(dsn, poison))[0] == 0
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            rows = await conn.fetch("SELECT what, error FROM set_aside WHERE stage = 'alerts' ORDER BY id")
        finally:
            await conn.close()
        # the alert, then its audit entries (they refer to it: refused by the foreign key)
        assert rows[0]["what"].startswith("alert ") and "InternalClientError" in rows[0]["error"]
        assert all("ForeignKeyViolation" in r["error"] for r in rows[1:])
        # the whole set until its tries (the database answering) pass the limit, then the alert alone, once
        assert faults.calls == UNKNOWN_ERROR_RETRIES + 2


class OutageMidPieces:
    """The whole change set is refused as data (SQLSTATE 22021); stored piece by piece, the ``alert_opened`` audit
    entry stops PostgreSQL and fails with the broken connection."""

    def __init__(self, pg: PrivatePostgres) -> None:
        self.pg, self.stopped = pg, False
        self.real = storage.alerts.save_changes

    async def __call__(self, conn: Any, incidents: list[dict[str, Any]], alerts: list[dict[str, Any]],
                       audit: list[Any]) -> None:
        if incidents and alerts and audit:
            raise asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence for encoding UTF8: 0x00")
        if not self.stopped and any(entry[3] == "alert_opened" for entry in audit):
            self.stopped = True
            await asyncio.to_thread(self.pg.stop)
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        await self.real(conn, incidents, alerts, audit)


async def test_an_outage_while_storing_piece_by_piece_stores_each_piece_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the whole set was held again: the pieces stored before the outage were written twice (an audit entry
    of the incident twice). Now only the pieces not stored yet are held."""
    device = f"BTS-{uuid.uuid4().hex[:8]}"
    async with _stage_on_private_postgres() as (stage, pg, dsn):
        monkeypatch.setattr(storage.alerts, "save_changes", OutageMidPieces(pg))
        _offline(stage, device, datetime.now(UTC))
        await stage.flush()
        assert stage._unsaved, "the pieces not stored yet are held while the database is away"
        await asyncio.to_thread(pg.start)
        await _flush_until_stored(stage)
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            actions = [r["action"] for r in await conn.fetch(
                "SELECT action FROM alert_events ORDER BY id")]
            aside = await conn.fetchval("SELECT count(*) FROM set_aside")
        finally:
            await conn.close()
        assert {"alert_opened", "incident_opened"} <= set(actions) and aside == 0
        assert len(actions) == len(set(actions)), f"each audit entry once: {actions}"
        assert await _rows(dsn, device) == (1, 0)
