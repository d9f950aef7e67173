"""Which database failures the ingest retries and which quarantine the culprit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ingest import errors
from ingest.errors import (
    UNKNOWN_ERROR_RETRIES,
    Failure,
    always_transient,
    classify,
    database_answers,
    is_data_error,
    judge,
    terminate_unless_server_error,
)

pytestmark = pytest.mark.unit


def test_a_lost_race_is_always_retried_never_quarantined() -> None:
    """A deadlock or serialization failure says nothing about the data: retrying it for ever is right (it was
    classed permanent after a few tries, which would have quarantined good messages)."""
    for err in (asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
                asyncpg.exceptions.SerializationError("could not serialize access")):
        assert classify(err, UNKNOWN_ERROR_RETRIES + 5) is Failure.TRANSIENT


def test_refused_data_is_permanent_at_once() -> None:
    assert classify(asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence"), 1) is Failure.PERMANENT


# --- what is not clearly about the data is not refused while the database is away ------------------------------

_BROKEN_COPY = "cannot switch to state 15; another operation (2) is in progress"


class _Answering:
    """A pool whose connections answer ``SELECT 1``; counts the probes."""

    def __init__(self) -> None:
        self.probes = 0

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Answering]:
        self.probes += 1
        yield self

    async def fetchval(self, query: str) -> int:
        assert query == "SELECT 1"
        return 1


class _Away(_Answering):
    """A pool whose database is stopped: connecting is refused."""

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Answering]:
        self.probes += 1
        raise ConnectionRefusedError(111, "Connect call failed")
        yield self  # pragma: no cover


class _Hanging(_Answering):
    """A pool whose database never answers (a partition without a reset)."""

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[_Answering]:
        self.probes += 1
        await asyncio.sleep(3600)
        yield self  # pragma: no cover


def test_data_errors_are_the_sqlstate_classes_22_and_23_only() -> None:
    assert is_data_error(asyncpg.exceptions.NumericValueOutOfRangeError("out of range"))  # 22003
    assert is_data_error(asyncpg.exceptions.UniqueViolationError("duplicate key"))  # 23505
    assert is_data_error(asyncpg.exceptions.DataError("invalid input for query argument"))  # asyncpg's own, 22000
    assert not is_data_error(asyncpg.exceptions.InternalServerError("XX000"))
    assert not is_data_error(asyncpg.exceptions.InternalClientError(_BROKEN_COPY))
    assert not is_data_error(ValueError("22003"))  # a message is no SQLSTATE


def test_a_broken_protocol_state_is_retried_like_an_unknown_server_error() -> None:
    """The error of a connection that broke mid-COPY when the server shut down (MRO: just Exception): it was
    classed permanent at once, and a good message was quarantined."""
    err = asyncpg.exceptions.InternalClientError(_BROKEN_COPY)
    for attempts in range(1, UNKNOWN_ERROR_RETRIES + 1):
        assert classify(err, attempts) is Failure.TRANSIENT
        assert classify(asyncpg.exceptions.InternalServerError("XX000"), attempts) is Failure.TRANSIENT
    assert classify(err, UNKNOWN_ERROR_RETRIES + 1) is Failure.PERMANENT


def test_outages_are_always_transient_and_a_bug_in_the_rows_is_permanent() -> None:
    for err in (ConnectionRefusedError(111, "refused"), TimeoutError(), asyncpg.exceptions.InterfaceError("closed"),
                asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),  # 57P03
                asyncpg.exceptions.AdminShutdownError("terminating connection"),  # 57P01
                asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),  # 08003
                asyncpg.exceptions.UndefinedTableError("relation does not exist")):  # 42P01: not migrated yet
        assert always_transient(err)
        assert classify(err, UNKNOWN_ERROR_RETRIES + 5) is Failure.TRANSIENT
    assert not always_transient(asyncpg.exceptions.InternalClientError(_BROKEN_COPY))
    assert classify(TypeError("unsupported operand"), 1) is Failure.PERMANENT


@pytest.mark.parametrize("err", [asyncpg.exceptions.InternalClientError(_BROKEN_COPY), RuntimeError("what?"),
                                 asyncpg.exceptions.InternalServerError("XX000")],
                         ids=["internal-client-error", "unknown-exception", "unknown-server-error"])
async def test_an_unknown_failure_is_transient_and_not_counted_while_the_database_is_away(err: Exception) -> None:
    away = _Away()
    for _ in range(UNKNOWN_ERROR_RETRIES + 5):  # however often: the poison limit is not reached
        assert await judge(err, UNKNOWN_ERROR_RETRIES + 5, away) == (Failure.TRANSIENT, False)
    assert away.probes == UNKNOWN_ERROR_RETRIES + 5


async def test_a_database_that_does_not_answer_in_time_is_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(errors, "PROBE_TIMEOUT_S", 0.05)
    started = time.monotonic()
    assert await judge(RuntimeError("what?"), 1, _Hanging()) == (Failure.TRANSIENT, False)
    assert time.monotonic() - started < 1.0
    assert not await database_answers(_Away()) and await database_answers(_Answering())


async def test_while_the_database_answers_an_unknown_failure_counts_as_before() -> None:
    up = _Answering()
    broken = asyncpg.exceptions.InternalClientError(_BROKEN_COPY)
    assert await judge(broken, 1, up) == (Failure.TRANSIENT, True)
    assert await judge(broken, UNKNOWN_ERROR_RETRIES, up) == (Failure.TRANSIENT, True)
    assert await judge(broken, UNKNOWN_ERROR_RETRIES + 1, up) == (Failure.PERMANENT, True)
    assert await judge(RuntimeError("what?"), 1, up) == (Failure.PERMANENT, True)  # no database error: at once
    assert up.probes == 4


async def test_data_errors_and_outages_need_no_probe() -> None:
    away = _Away()
    refused = asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence")
    assert await judge(refused, 1, away) == (Failure.PERMANENT, True)
    assert await judge(ConnectionResetError(104, "reset"), 1, away) == (Failure.TRANSIENT, False)
    assert away.probes == 0


class _Conn:
    def __init__(self) -> None:
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True


def test_a_connection_is_terminated_after_any_failure_the_server_did_not_report() -> None:
    for err, terminated in ((asyncpg.exceptions.InternalClientError(_BROKEN_COPY), True),
                            (ConnectionResetError(104, "reset"), True), (RuntimeError("what?"), True),
                            (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),
                            (asyncpg.exceptions.DeadlockDetectedError("deadlock"), False)):
        conn = _Conn()
        terminate_unless_server_error(conn, err)
        assert conn.terminated is terminated, err
