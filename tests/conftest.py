"""Shared fixtures: a migrated database per test session on the real PostgreSQL, the real Mosquitto."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ioc.services import db_upgrade
from ioc.settings import Settings

BASE_DSN = os.environ.get("IOC_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MQTT_URL = os.environ.get("IOC_TEST_MQTT_URL", "mqtt://127.0.0.1:1883")


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
