"""Which database failures the ingest retries and which quarantine the culprit."""

from __future__ import annotations

import asyncpg
import pytest

from ingest.errors import UNKNOWN_ERROR_RETRIES, Failure, classify

pytestmark = pytest.mark.unit


def test_a_lost_race_is_always_retried_never_quarantined() -> None:
    """A deadlock or serialization failure says nothing about the data: retrying it for ever is right (it was
    classed permanent after a few tries, which would have quarantined good messages)."""
    for err in (asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
                asyncpg.exceptions.SerializationError("could not serialize access")):
        assert classify(err, UNKNOWN_ERROR_RETRIES + 5) is Failure.TRANSIENT


def test_refused_data_is_permanent_at_once() -> None:
    assert classify(asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence"), 1) is Failure.PERMANENT
