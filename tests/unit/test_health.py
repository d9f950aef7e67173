"""Health that tells the truth: parts report when work waits and nothing moves, and /readyz gathers them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from ingest.config import IngestConfig
from ingest.mqtt_session import SessionOptions
from ingest.worker import IngestWorker
from ioc.health import pipeline_problems
from storage.config import StorageConfig

pytestmark = pytest.mark.unit


def worker() -> IngestWorker:
    opts = SessionOptions(host="127.0.0.1", port=1, client_id="t", subscriptions=("ioc/v1/#",))
    return IngestWorker("postgresql://unused", opts, IngestConfig(stall_s=30), StorageConfig())


def test_a_worker_with_messages_waiting_and_no_commit_is_stalled() -> None:
    w = worker()
    w._on_connection_change(True)
    assert w.health_problems() == []
    w._pending = 12
    w._progress_at = time.monotonic() - 31
    w.last_db_error = "ConnectionRefusedError: [Errno 111]"
    (problem,) = w.health_problems()
    assert "12 messages received, none committed for 31 s" in problem
    assert "ConnectionRefusedError" in problem
    w._pending = 0  # an empty queue is not a stall, however long ago the last commit was
    assert w.health_problems() == []


def test_a_worker_whose_broker_link_stays_down_is_stalled() -> None:
    w = worker()
    w._on_connection_change(False)
    w._disconnected_at = time.monotonic() - 45
    assert any("broker link down for 45 s" in p for p in w.health_problems())
    w._on_connection_change(True)
    assert w.health_problems() == []


def test_pipeline_problems_gathers_every_part_and_survives_a_broken_check() -> None:
    class Stuck:
        def health_problems(self) -> list[str]:
            return ["alerts: incident changes not stored for 40 s"]

    class Broken:
        def health_problems(self) -> list[str]:
            raise RuntimeError("oops")

    state = SimpleNamespace(worker=None, listener=None, analytics=Broken(), alerts=Stuck())
    problems = pipeline_problems(state)
    assert problems == ["analytics: health check raised RuntimeError: oops",
                        "alerts: incident changes not stored for 40 s"]
    assert pipeline_problems(SimpleNamespace()) == []


def test_alert_stage_reports_change_sets_waiting_too_long() -> None:
    from ioc.alerts.config import AlertsConfig
    from ioc.alerts.stage import AlertStage
    from ioc.geo import City
    from ioc.live.hub import LiveHub

    city = City.load()
    stage = AlertStage(LiveHub(city.district_of), None, city, AlertsConfig())
    assert stage.health_problems() == []
    stage.flush_failing_since = datetime.now(UTC) - timedelta(seconds=90)
    assert "not stored for 90 s" in stage.health_problems()[0]


def test_a_refused_subscription_is_a_problem_not_silence() -> None:
    """Brokers that refuse a SUBACK (an ACL, a share group the account may not join) leave a connected
    session that receives nothing; the worker reports it. (Mosquitto 2.0 grants and filters instead: there
    the alert stage's "input stalled" check is what notices.)"""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    w = worker()
    w._on_connection_change(True)
    w.session._on_subscribe(w.session._client, None, 1, [ReasonCode(PacketTypes.SUBACK, "Not authorized")], None)
    (problem,) = w.health_problems()
    assert "refused the subscription (Not authorized)" in problem


def test_alert_stage_reports_stalled_input() -> None:
    from ioc.alerts.config import AlertsConfig
    from ioc.alerts.stage import AlertStage
    from ioc.geo import City
    from ioc.live.hub import LiveHub

    city = City.load()
    stage = AlertStage(LiveHub(city.district_of), None, city, AlertsConfig())
    stage._stalled, stage._quiet = True, 40
    assert "input stalled, 40 of" in stage.health_problems()[0]
