"""Integration fixtures: an in-process API client and ``ioc ingest`` child processes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from ioc.api.app import create_app
from ioc.settings import Settings
from tests.conftest import ingest_env
from tests.support.auth import client_for, make_token
from tests.support.services import IngestProcess


@pytest.fixture
async def api_app(database_url: str) -> AsyncIterator[FastAPI]:
    """The real app with its lifespan running, against the session's database."""
    app = create_app(Settings(database_url=database_url))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def api(api_app: FastAPI, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of the real app, authenticated with an admin API token. For another role or
    anonymous: ``tests.support.auth.client_for(api_app, await make_token(database_url, "viewer"))``."""
    async with client_for(api_app, await make_token(database_url, "admin")) as client:
        yield client


@pytest.fixture
def ingest(database_url: str, mqtt_port: int, artifacts: Path) -> Iterator[IngestProcess]:
    """A running ``ioc ingest`` worker on the shared broker, in its own share group."""
    proc = IngestProcess(ingest_env(database_url, mqtt_port), f"it-{uuid.uuid4().hex[:8]}",
                         artifacts / "ingest.log")
    proc.start()
    yield proc
    proc.stop()
