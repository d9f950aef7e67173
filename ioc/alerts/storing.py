"""How the alert stage deals with a change set the database did not take: hold it, or store it piece by piece.

Failures are judged as the ingest writer judges them (:func:`ingest.errors.judge`): only SQLSTATE classes 22 and
23 blame the data at once. Any other unclear failure (a connection broken by a server shutdown, a protocol error)
first asks whether the database answers at all: while it does not, it is an outage and the set is held and
retried (the engine's memory is the truth), never set aside. Before, an unknown exception was refused at once and
an ``InternalClientError`` was never refused at all (each piece's try counted as its first), so a piece that kept
raising it held every later change behind it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from prometheus_client import Counter

from ingest.errors import Failure, judge, terminate_unless_server_error
from ingest.metrics import HANDLER_ERRORS
from ioc.alerts.model import Changes, Page
from storage import alerts as store
from storage import cluster as cluster_sql
from storage import notifications as outbox
from storage.set_aside import set_aside

logger = logging.getLogger("ioc.alerts.stage")

SET_ASIDE = Counter("ioc_set_aside", "Pieces of change sets set aside because the data was refused", ["stage"])


def fenced(err: BaseException) -> bool:
    """A write refused because this process lost the lease (ioc/cluster): never set aside, never retried here."""
    return type(err).__name__ == "FencedError"


def drop_connection(conn: Any, err: BaseException) -> None:
    """After a failed write: a connection in an unknown state (not a server error) never goes back to the pool."""
    if not fenced(err):  # the fence is a clean refusal inside a healthy transaction
        terminate_unless_server_error(conn, err)


@dataclass
class _Piece:
    what: str
    write: Callable[[Any], Awaitable[Any]]
    doc: Any  # the piece as data, for the set-aside row
    told: Changes  # what the other replicas are told changed (the guard's NOTIFY)
    part: Changes  # the piece itself: what is held again if it is not stored


class Storing:
    """The storing half of :class:`ioc.alerts.stage.AlertStage` (which holds these attributes)."""

    pool: Any
    guard: Callable[[Any, Changes], Awaitable[None]] | None
    _unsaved: Changes
    _flush_attempts: int
    flush_failing_since: datetime | None
    _incident_row: Callable[[Any], dict[str, Any]]
    _page_rows: Callable[[Page], list[Any]]
    _push: Callable[[Changes], None]

    def _hold(self, ch: Changes) -> None:
        """Keep ``ch`` (older) in front of what changed since, for the next flush."""
        ch.merge(self._unsaved)
        self._unsaved = ch

    async def _verdict(self, err: BaseException) -> Failure:
        """:func:`ingest.errors.judge`; only failures while the database answers count toward the poison limit."""
        if fenced(err):
            return Failure.TRANSIENT
        verdict, counted = await judge(err, self._flush_attempts + 1, self.pool)
        self._flush_attempts += counted
        return verdict

    async def _flush_failed(self, ch: Changes, err: Exception) -> bool:
        """A change set was not stored. True when it was dealt with (stored piecewise, refused pieces set aside).

        While the database is away the set is kept and retried (the engine's memory is the truth). But when the
        data itself is refused (a value PostgreSQL will never take, or a failure that repeats while the database
        answers), retrying it for ever would hold every later incident change and page behind it: the set is
        stored piece by piece instead, and each refused piece goes to the ``set_aside`` table with its error, for
        admins (``GET /api/set-aside``).
        """
        if self.flush_failing_since is None:
            self.flush_failing_since = datetime.now(UTC)
        if await self._verdict(err) is Failure.TRANSIENT:
            logger.warning("alert changes not stored yet (%s: %s); retrying", type(err).__name__, err)
            self._hold(ch)
            return False
        HANDLER_ERRORS.labels("alert_flush").inc()
        logger.error("alert change set refused (%s: %s); storing it piece by piece", type(err).__name__, err)
        rest = await self._store_piecewise(ch)
        if rest is not None:  # the database went away meanwhile: what is not stored yet is retried
            self._hold(rest)
            return False
        return True

    def _pieces(self, ch: Changes) -> list[_Piece]:
        save = store.save_changes
        pieces: list[_Piece] = []
        if ch.actions:  # the results of officers' actions go with the first piece (their effect is in the set)
            pieces.append(_Piece("officers' actions", partial(cluster_sql.finish_actions, done=ch.actions),
                                 {str(k): v[1] for k, v in ch.actions.items()}, Changes(),
                                 Changes(actions=dict(ch.actions))))
        for inc in ch.incidents.values():
            row = self._incident_row(inc)
            one = Changes(incidents={inc.id: inc})
            pieces.append(_Piece(f"incident {inc.id}", partial(save, incidents=[row], alerts=[], audit=[]), row,
                                 one, one))
        for a in ch.alerts.values():
            arow = a.to_dict(raw=True)
            one = Changes(alerts={a.id: a})
            pieces.append(_Piece(f"alert {a.id}", partial(save, incidents=[], alerts=[arow], audit=[]), arow,
                                 one, one))
        for e in ch.audit:
            entry = (e.ts, e.incident_id, e.alert_id, e.action, e.actor, e.note, e.detail)
            pieces.append(_Piece(f"audit {e.action} of incident {e.incident_id}",
                                 partial(save, incidents=[], alerts=[], audit=[entry]), entry, Changes(),
                                 Changes(audit=[e])))
        for page in ch.pages:
            rows = self._page_rows(page)
            if rows:
                pieces.append(_Piece(f"page {page.reason} of incident {page.incident_id}",
                                     partial(outbox.enqueue, rows=rows), rows, Changes(), Changes(pages=[page])))
        return pieces

    async def _store_piecewise(self, ch: Changes) -> Changes | None:
        """Each incident, alert, audit entry and page in its own transaction; refused ones set aside.

        Returns None when every piece is stored or set aside (the caller pushes the set), else the pieces not
        stored yet (an outage, a fence): those already dealt with are pushed now and not written twice (an audit
        entry would be).
        """
        pieces = self._pieces(ch)
        for n, piece in enumerate(pieces):
            try:
                await self._store_piece(piece)
            except Exception as err:
                if await self._verdict(err) is Failure.TRANSIENT:
                    logger.warning("alert changes not stored yet (%s: %s); retrying", type(err).__name__, err)
                    return self._rest(pieces, n)
                try:  # a fresh connection (the failed one may be gone), fenced like the piece
                    async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                        if self.guard is not None:
                            await self.guard(conn, Changes())
                        await set_aside(conn, "alerts", piece.what, err, self._flush_attempts, piece.doc)
                except Exception as again:
                    logger.warning("alert change not set aside yet (%s); retrying", again)
                    return self._rest(pieces, n)
                SET_ASIDE.labels("alerts").inc()
                logger.error("alert change set aside: %s (%s: %s)", piece.what, type(err).__name__, err)
        return None

    def _rest(self, pieces: list[_Piece], n: int) -> Changes:
        self._push(_joined(pieces[:n]))
        return _joined(pieces[n:])

    async def _store_piece(self, piece: _Piece) -> None:
        async with self.pool.acquire(timeout=5) as conn:
            try:
                async with conn.transaction():
                    if self.guard is not None:  # the lease's fence, and a NOTIFY to the other replicas
                        await self.guard(conn, piece.told)
                    await piece.write(conn)
            except Exception as err:
                drop_connection(conn, err)
                raise


def _joined(pieces: list[_Piece]) -> Changes:
    rest = Changes()
    for piece in pieces:
        rest.merge(piece.part)
    return rest
