"""Shared fixtures: a migrated database per test session on the real PostgreSQL, the real Mosquitto.

Under pytest-xdist (``scripts/test.sh`` runs ``-n 2 --dist loadfile``) each worker has its own session database
and its own Mosquitto (see ``pytest_configure``); NATS streams, leases, devices, roles and databases are named
uniquely by the tests themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ioc.services import db_upgrade
from ioc.settings import Settings

BASE_DSN = os.environ.get("IOC_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MQTT_URL = os.environ.get("IOC_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")  # a worker's own broker: pytest_configure

_worker_services = contextlib.ExitStack()
_LOCK_DIR: str | None = None  # set in an xdist worker: where the run's serial lock lives (_turn)


def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker gets a Mosquitto of its own, with the shared broker's settings (Mosquitto's defaults).

    The topic tree is fixed (``ioc/v1/#``) and every ingest worker, live feed and brain subscribes to all of it:
    on one broker, a test's processes would take in the other worker's readings (rows, quarantine, incidents and
    load the test did not make). ``IOC_MQTT_URL`` is set too, so ``Settings()`` made in the test process reach it.
    An explicit ``IOC_TEST_MQTT_URL`` is kept as it is.
    """
    global MQTT_URL, _LOCK_DIR
    _LOCK_DIR = os.environ.get("IOC_TEST_LOCK_DIR") if os.environ.get("PYTEST_XDIST_WORKER") else None
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        if getattr(config.option, "numprocesses", None):  # the controller: a folder for the workers' locks (_turn)
            os.environ["IOC_TEST_LOCK_DIR"] = _worker_services.enter_context(
                tempfile.TemporaryDirectory(prefix="ioc-test-locks-"))
        return
    if "IOC_TEST_MQTT_URL" in os.environ:
        return
    from tests.support.services import private_mosquitto

    port = _worker_services.enter_context(private_mosquitto(limits=""))
    MQTT_URL = os.environ["IOC_TEST_MQTT_URL"] = os.environ["IOC_MQTT_URL"] = f"mqtt://127.0.0.1:{port}"


def pytest_unconfigure(config: pytest.Config) -> None:
    _worker_services.close()


#: The longest files (about a minute or more on a 2-core machine), handed out first under xdist
#: (``--no-loadscope-reorder``: files go in collection order) so that the run does not end on one of them.
LONG_FILES = ("test_detection_feed", "test_cluster_province", "test_wall_ui", "test_partition_redteam",
              "test_numeric_rules", "test_numeric_routine", "test_cluster_outages", "test_auth_hardening",
              "test_numeric_young", "test_numeric_novel_hour", "test_ingest_faults", "test_action_fuzz",
              "test_action_fuzz_replica")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker (each sorts its identical collection the same way)
        rank = {name: i for i, name in enumerate(LONG_FILES)}
        items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest keep their order


@contextlib.contextmanager
def _turn(alone: bool) -> Iterator[None]:
    """Under xdist, a test marked ``serial`` (timing bounds meant for a machine busy with that test alone) holds
    the run's lock exclusively, every other test shares it: the other worker waits meanwhile. A gate taken
    briefly before the lock keeps a waiting serial test from being starved by the other worker's next tests."""
    if _LOCK_DIR is None:
        yield
        return
    with open(os.path.join(_LOCK_DIR, "gate"), "a") as gate, open(os.path.join(_LOCK_DIR, "lock"), "a") as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Around a test's setup, call and teardown (module fixtures included): its turn (``_turn``)."""
    with _turn(item.get_closest_marker("serial") is not None):
        return (yield)


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(base_dsn: str) -> str:
    """Create a fresh database next to ``base_dsn`` and migrate it; return its DSN."""
    name = f"ioc_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(base_dsn)
    try:
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    dsn = with_database(base_dsn, name)
    await db_upgrade(Settings(database_url=dsn))
    return dsn


async def drop_database(base_dsn: str, dsn: str) -> None:
    conn = await asyncpg.connect(base_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {urlsplit(dsn).path.lstrip('/')} WITH (FORCE)")
    finally:
        await conn.close()


def own_database() -> Iterator[str]:
    """A fresh migrated database, dropped afterwards: the body of a ``database_url`` fixture."""
    dsn = asyncio.run(create_database(BASE_DSN))
    yield dsn
    asyncio.run(drop_database(BASE_DSN, dsn))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated database (partitioned-PostgreSQL backend) for the whole test session. A module whose tests
    leave many open alerts behind overrides it with its own (``own_database``): later tests' incidents would
    join them."""
    yield from own_database()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="session")
def mqtt_port() -> int:
    return urlsplit(MQTT_URL).port or 1883


def ingest_env(database_url: str, mqtt_port: int, **extra: str) -> dict[str, str]:
    """Environment for an ``ioc ingest`` (or ``ioc serve``) child: its own share group, short-lived broker session,
    and a brain session of its own. (The brain's session is named after the database and persists so that the next
    leader resumes it; on the shared test database every test's server resumed the earlier tests' session and was
    handed up to 1,000 of their queued messages.) Processes started from one environment share it, as a cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOC_")}
    tag = uuid.uuid4().hex[:8]
    env.update({
        "IOC_DATABASE_URL": database_url,
        "IOC_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
        "IOC_MQTT__SHARE_GROUP": f"test-{tag}",
        "IOC_MQTT__SESSION_EXPIRY_S": "300",
        "IOC_CLUSTER__BRAIN_CLIENT_ID": f"ioc-brain-test-{tag}",
        "IOC_CLUSTER__BRAIN_SESSION_EXPIRY_S": "300",
        "IOC_LOG_LEVEL": "INFO",
    })
    env.update(extra)
    return env


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """A folder for logs and screenshots of this test (kept after the run)."""
    path = Path(__file__).resolve().parent.parent / "artifacts" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path
