"""The one retry backoff (ingest/backoff.py) and that every retry loop takes its delays from it."""

from __future__ import annotations

import inspect
import random

import pytest

from ingest import mqtt_session, worker
from ingest.backoff import Backoff, backoff_delay
from ioc.alerts import stage
from ioc.alerts.notify import dispatcher

pytestmark = pytest.mark.unit


def test_delays_double_up_to_the_cap_and_keep_half_the_nominal_delay() -> None:
    rng = random.Random(1)
    for attempt in range(1, 15):
        nominal = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert max(delays) - min(delays) > nominal / 4  # spread, not one value
    assert backoff_delay(10_000, 1.0, 5.0) <= 5.0  # no overflow
    assert backoff_delay(0, 1.0, 5.0) <= 1.0  # below 1 counts as the first failure
    with pytest.raises(ValueError):
        backoff_delay(1, -1.0, 5.0)


def test_workers_that_failed_together_do_not_retry_together() -> None:
    # Eight workers lose the database at once; after five failures their next tries are spread out.
    workers = [Backoff(0.5, 30.0, random.Random(seed)) for seed in range(8)]
    for _ in range(4):
        for b in workers:
            b.next_delay()
    fifth = sorted(b.next_delay() for b in workers)
    assert fifth[-1] - fifth[0] > 1.0
    assert len({round(d, 2) for d in fifth}) == len(fifth)


def test_reset_starts_again_from_the_base() -> None:
    b = Backoff(1.0, 60.0, random.Random(3))
    grown = [b.next_delay() for _ in range(5)]
    assert grown[-1] >= 8.0
    b.reset()
    assert b.next_delay() <= 1.0
    assert b.attempt == 1


async def test_sleep_waits_the_delay_it_returns() -> None:
    b = Backoff(0.001, 0.002)
    assert 0.0005 <= await b.sleep() <= 0.001


@pytest.mark.parametrize("function", [
    worker.IngestWorker._open_pool, worker.IngestWorker._commit, worker.IngestWorker._commit_rows_forever,
    mqtt_session.MqttSession.run, dispatcher.NotificationDispatcher.run, dispatcher.NotificationDispatcher._deliver,
    stage.AlertStage.run,
])
def test_every_retry_loop_uses_the_helper(function: object) -> None:
    source = inspect.getsource(function)  # type: ignore[arg-type]
    assert "Backoff(" in source or "backoff_delay(" in source
    assert "delay * 2" not in source and "pause * 2" not in source
