"""Integration fixtures: an in-process API client and ``ioc ingest`` child processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from ioc.api.app import create_app
from ioc.settings import Settings
from tests.conftest import ingest_env
from tests.support.services import IngestProcess


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The real app (lifespan included) over ASGI, against the session's database."""
    app = create_app(Settings(database_url=database_url))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://ioc") as client:
        yield client


@pytest.fixture
def ingest(database_url: str, mqtt_port: int, artifacts: Path) -> Iterator[IngestProcess]:
    """A running ``ioc ingest`` worker on the shared broker, in its own share group."""
    proc = IngestProcess(ingest_env(database_url, mqtt_port), f"it-{uuid.uuid4().hex[:8]}",
                         artifacts / "ingest.log")
    proc.start()
    yield proc
    proc.stop()
