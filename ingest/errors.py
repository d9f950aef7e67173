"""Classify database failures: transient ones are retried forever, permanent ones quarantine the culprit."""

from __future__ import annotations

import asyncio
from enum import Enum

import asyncpg


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
#: A server error of any other class is retried this often, then treated as permanent (poison batch).
UNKNOWN_ERROR_RETRIES = 3


def classify(err: BaseException, attempts: int = 1) -> Failure:
    """Decide whether retrying ``err`` (after ``attempts`` tries of the same batch) can help."""
    if isinstance(err, asyncpg.PostgresError):
        code = getattr(err, "sqlstate", None) or ""
        if code in _TRANSIENT_CODES or code[:2] in _CONNECTION_CLASSES or code[:2] in _RETRY_CLASSES:
            return Failure.TRANSIENT
        if code[:2] in _PERMANENT_CLASSES or attempts > UNKNOWN_ERROR_RETRIES:
            return Failure.PERMANENT
        return Failure.TRANSIENT
    if isinstance(err, OSError | asyncio.TimeoutError | asyncpg.InterfaceError | ConnectionError):
        return Failure.TRANSIENT
    return Failure.PERMANENT
