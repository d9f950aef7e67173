"""Which storage backend `ioc db upgrade` picks, from what the server says (no I/O)."""

from __future__ import annotations

import pytest

from storage.config import StorageConfig
from storage.db import Backend, StorageError
from storage.migrate import NOT_PRELOADED_HELP, ServerFacts, decide_backend, preloaded

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("value", "expected"), [
    ("timescaledb", True), ("pg_stat_statements, timescaledb", True), ('"timescaledb"', True),
    ("$libdir/timescaledb", True), ("timescaledb.so", True), ("", False), ("pg_stat_statements", False),
    ("timescaledb_toolkit", False)])
def test_preload_list_is_read_like_the_server_reads_it(value: str, expected: bool) -> None:
    assert preloaded(value) is expected


def test_off_chooses_postgres_even_with_the_package_half_installed() -> None:
    facts = ServerFacts(available=True, installed=False, preload="")
    assert decide_backend(StorageConfig(timescaledb="off"), facts) is Backend.POSTGRES


@pytest.mark.parametrize(("facts", "expected"), [
    (ServerFacts(available=True, installed=False, preload="timescaledb"), Backend.TIMESCALEDB),
    # not listed: the server's answer to CREATE EXTENSION decides (some builds load it without the list)
    (ServerFacts(available=True, installed=False, preload="pg_stat_statements"), Backend.TIMESCALEDB),
    (ServerFacts(available=True, installed=True, preload=None), Backend.TIMESCALEDB),
    (ServerFacts(available=True, installed=False, preload=None), Backend.TIMESCALEDB),  # CREATE EXTENSION tells
    (ServerFacts(available=False, installed=False, preload=""), Backend.POSTGRES)])
def test_auto(facts: ServerFacts, expected: Backend) -> None:
    assert decide_backend(StorageConfig(timescaledb="auto"), facts) is expected


def test_require_without_the_package_says_so() -> None:
    with pytest.raises(StorageError, match="not installed"):
        decide_backend(StorageConfig(timescaledb="require"), ServerFacts(False, False, ""))


def test_the_help_names_both_ways_out() -> None:
    assert "shared_preload_libraries" in NOT_PRELOADED_HELP and "restart" in NOT_PRELOADED_HELP
    assert "IOC_STORAGE__TIMESCALEDB=off" in NOT_PRELOADED_HELP
