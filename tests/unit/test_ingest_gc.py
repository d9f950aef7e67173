"""The ingest worker runs Python's full garbage collections less often (ingest.worker.GC_FULL_EVERY)."""

from __future__ import annotations

import gc

import pytest

from ingest.config import IngestConfig
from ingest.mqtt_session import SessionOptions
from ingest.worker import GC_FULL_EVERY, IngestWorker
from storage.config import StorageConfig

pytestmark = pytest.mark.unit


class _Stop(Exception):
    pass


async def test_the_worker_sets_the_full_collection_threshold_and_keeps_the_others() -> None:
    saved = gc.get_threshold()
    session = SessionOptions(host="127.0.0.1", port=1, client_id="gc", subscriptions=("ioc/v1/#",))
    worker = IngestWorker("postgresql://unused", session, IngestConfig(), StorageConfig())

    async def no_database() -> None:
        raise _Stop

    worker._open_pool = no_database  # type: ignore[method-assign]
    try:
        gc.set_threshold(700, 10, 10)
        with pytest.raises(_Stop):
            await worker.run()
        assert gc.get_threshold() == (700, 10, GC_FULL_EVERY) and GC_FULL_EVERY > 10
        gc.set_threshold(500, 5, 1000)  # a process that asked for even fewer keeps its choice
        with pytest.raises(_Stop):
            await worker.run()
        assert gc.get_threshold() == (500, 5, 1000)
    finally:
        gc.set_threshold(*saved)
