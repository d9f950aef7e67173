"""Classify database failures: transient ones are retried forever, permanent ones quarantine the culprit.

The rule: only data errors (SQLSTATE classes 22 and 23) are refused for good at once. Any other failure may be
the database going away under the write (a connection broken mid-COPY by a server shutdown leaves asyncpg's
protocol in a state it reports as an :class:`asyncpg.exceptions.InternalClientError`): before such a failure
counts toward the poison limit, :func:`database_answers` checks that the database is there at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, TypeVar

import asyncpg

from ingest.backoff import Backoff

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Failure(Enum):
    """How the writer reacts to a failed batch."""

    TRANSIENT = "transient"  # the database is away or busy: retry the same batch
    PERMANENT = "permanent"  # the data is refused: split the batch and quarantine the refused message


# SQLSTATE classes that mean "this data will never be accepted": data exceptions, integrity violations.
_PERMANENT_CLASSES = ("22", "23")
# Within class 42, a missing table means the schema is not migrated yet: wait for `ioc db upgrade`.
_TRANSIENT_CODES = ("42P01",)


# Classes that mean the server is away, shutting down or out of resources: always worth waiting for.
_CONNECTION_CLASSES = ("08", "53", "57")
# Class 40 (deadlock, serialization failure): the transaction lost a race, its data is fine: always retry.
_RETRY_CLASSES = ("40",)
#: A server error of any other class (or a client-side protocol error) is retried this often while the database
#: answers, then treated as permanent (poison batch).
UNKNOWN_ERROR_RETRIES = 3
#: How long :func:`database_answers` waits for a connection and ``SELECT 1``.
PROBE_TIMEOUT_S = 3.0

_OUTAGE_TYPES = (OSError, TimeoutError, asyncpg.InterfaceError, ConnectionError)


def _sqlstate(err: BaseException) -> str:
    return getattr(err, "sqlstate", None) or ""


def is_data_error(err: BaseException) -> bool:
    """True when the database refused the data itself (SQLSTATE class 22 or 23): retrying cannot help."""
    return isinstance(err, asyncpg.PostgresError) and _sqlstate(err)[:2] in _PERMANENT_CLASSES


def always_transient(err: BaseException) -> bool:
    """True when ``err`` says the database is away, busy or lost a race: retried for ever, never counted."""
    if isinstance(err, asyncpg.PostgresError):
        code = _sqlstate(err)
        return code in _TRANSIENT_CODES or code[:2] in _CONNECTION_CLASSES or code[:2] in _RETRY_CLASSES
    return isinstance(err, _OUTAGE_TYPES)


def classify(err: BaseException, attempts: int = 1) -> Failure:
    """Decide whether retrying ``err`` (after ``attempts`` tries of the same batch) can help.

    This looks at the error alone. An error that is neither an outage nor a data error may still be an outage
    in disguise: writers that quarantine or set aside on PERMANENT should first ask :func:`database_answers`
    (see :func:`judge`).
    """
    if always_transient(err):
        return Failure.TRANSIENT
    if is_data_error(err):
        return Failure.PERMANENT
    if isinstance(err, asyncpg.PostgresError | asyncpg.exceptions.InternalClientError):
        return Failure.PERMANENT if attempts > UNKNOWN_ERROR_RETRIES else Failure.TRANSIENT
    return Failure.PERMANENT  # e.g. building the rows raised: a bug that this data triggers


async def database_answers(pool: Any, timeout: float | None = None) -> bool:
    """True when a connection from ``pool`` answers ``SELECT 1`` within ``timeout`` seconds. Never raises."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S if timeout is None else timeout):
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
    except Exception:
        return False
    return True


async def judge(err: BaseException, attempts: int, pool: Any) -> tuple[Failure, bool]:
    """:func:`classify`, but an error not clearly about the data is transient while the database does not answer.

    Returns the verdict and whether this failure counts toward the poison limit (``attempts``): it counts only
    when it is neither an outage nor a data error and the database answered the probe. ``attempts`` is the
    number of counted failures including this one.
    """
    if always_transient(err):
        return Failure.TRANSIENT, False
    if is_data_error(err):
        return Failure.PERMANENT, True
    if not await database_answers(pool):
        return Failure.TRANSIENT, False
    return classify(err, attempts), True


def terminate_unless_server_error(conn: Any, err: BaseException) -> None:
    """Close ``conn`` for good after a failure the server did not report itself.

    A server error (:class:`asyncpg.PostgresError`) leaves the connection in a known state; anything else
    (a broken socket, a protocol left mid-COPY) may not, and the pool must not hand it out again.
    """
    if not isinstance(err, asyncpg.PostgresError):
        with contextlib.suppress(Exception):
            conn.terminate()


async def read_until_answered(pool: Any, read: Callable[[], Awaitable[T]], what: str) -> T:
    """``read()``, retried with backoff for as long as its failure is the database's (away, busy, or not answering
    a probe); any other failure is raised."""
    backoff = Backoff(0.5, 5.0)
    while True:
        try:
            return await read()
        except Exception as err:
            if not (always_transient(err) or not await database_answers(pool)):
                raise
            delay = backoff.next_delay()
            logger.warning("%s not read yet (%s); retrying in %.1f s", what, err, delay)
            await asyncio.sleep(delay)
