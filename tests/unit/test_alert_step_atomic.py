"""An alert step is all or nothing: one that raises half way loses no signal and acks nothing it did not store.

Before, a step whose reserved ids ran out after some alerts fired left those alerts in the engine's memory with
their changes thrown away: the retry found them existing, stored nothing, and advanced the acked position. A
step that raised for any other reason dropped its signals and their messages were acked all the same.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ingest.records import DeviceEvent, ParsedMessage
from ioc.alerts.checkpoint import checkpoint
from ioc.alerts.config import AlertsConfig
from ioc.alerts.model import Changes, Severity, Signal
from ioc.alerts.stage import AlertStage
from ioc.cluster.ids import IdReserve
from ioc.geo import City
from ioc.live.hub import LiveHub

pytestmark = pytest.mark.unit


def _stage(seq: list[int]) -> AlertStage:
    city = City.load()
    stage = AlertStage(LiveHub(city.district_of), None, city, AlertsConfig())
    stage.position = lambda: seq[0]
    return stage


def _event(dev: str, now: datetime) -> ParsedMessage:
    return ParsedMessage([DeviceEvent(dev, "bts", now, "mains_power_lost", "major")], [])


def test_ids_running_out_mid_step_lose_no_alert_and_hold_the_position() -> None:
    seq = [0]
    stage = _stage(seq)
    stage.ids = IdReserve()
    stage.engine.id_source = stage.ids
    stage.ids._ids["alert"] = deque([101, 102])
    stage.ids._ids["incident"] = deque([201])  # enough for the first alert and its incident only
    now = datetime.now(UTC)
    stage.on_parsed(_event("dev-a", now))
    seq[0] = 1
    stage.on_parsed(_event("dev-b", now))
    seq[0] = 2
    stage._step_safely(now)
    assert not stage.engine.by_key and not stage.engine.alerts and not stage.engine.incidents  # undone
    assert not stage._unsaved and stage._step_seq == 0 and len(stage._signals) == 2  # waiting, not acked
    stage.ids._ids["alert"].extend(range(300, 320))
    stage.ids._ids["incident"].extend(range(400, 420))
    stage._step_safely(now)
    stored = {a.device_id for a in stage._unsaved.alerts.values()}
    assert stored == {"dev-a", "dev-b"} and set(stage._unsaved.alerts) == {a.id for a in stage.engine.by_key.values()}
    assert stage._step_seq == 2 and not stage._signals


def test_a_signal_the_engine_cannot_apply_is_set_aside_and_the_others_are_stored() -> None:
    seq = [5]
    stage = _stage(seq)
    now = datetime.now(UTC)
    stage.on_parsed(_event("dev-a", now))
    naive = now.replace(tzinfo=None)  # compared with the engine's aware clock: TypeError
    stage._signals.append(Signal("device_event", "door_open:x", True, naive, severity=Severity.CRITICAL))
    stage.on_parsed(_event("dev-b", now))
    stage._step_safely(now)
    assert stage.step_failing is not None  # the step raised (health counts it if it keeps raising)
    assert {a.device_id for a in stage._unsaved.alerts.values()} == {"dev-a", "dev-b"}
    assert [(s.key, why.split(":")[0]) for s, why in stage._refused] == [("door_open:x", "TypeError")]
    assert stage._step_seq == 5 and not stage._signals  # applied or set aside: the flush may ack them
    stage._step_safely(now + timedelta(seconds=1))
    assert stage.step_failing is None


def test_an_engine_that_raises_without_any_input_keeps_every_signal_unacked() -> None:
    seq = [3]
    stage = _stage(seq)
    now = datetime.now(UTC)
    stage.on_parsed(_event("dev-a", now))

    def broken_tick(at: datetime) -> Changes:
        raise TypeError("can't compare offset-naive and offset-aware datetimes")

    stage.engine.tick = broken_tick  # type: ignore[method-assign, assignment]
    stage._step_safely(now)
    assert stage.step_failing is not None and "TypeError" in stage.step_failing[1]
    assert not stage.engine.by_key and not stage._unsaved and not stage._refused  # observe undone
    assert stage._step_seq == 0 and len(stage._signals) == 1
    del stage.engine.tick  # repaired (e.g. the bad silence reloaded): the held signal fires
    stage._step_safely(now + timedelta(seconds=1))
    assert stage.step_failing is None and stage._step_seq == 3
    assert {a.device_id for a in stage._unsaved.alerts.values()} == {"dev-a"}


def test_a_restored_checkpoint_is_the_engine_before_the_step_same_objects() -> None:
    stage = _stage([0])
    now = datetime.now(UTC)
    stage.on_parsed(_event("dev-a", now))
    stage.step(now)
    engine = stage.engine
    (inc,) = engine.incidents.values()
    (alert,) = engine.alerts.values()
    before_inc, before_alert = replace(inc, members=list(inc.members), escalation=dict(inc.escalation)), replace(alert)
    saved = checkpoint(engine)
    engine.observe([Signal("mains_power_lost", "mains_power_lost:dev-a", False, now)], now)
    engine.observe([Signal("mains_power_lost", "mains_power_lost:dev-b", True, now, device_id="dev-a",
                           severity=alert.severity)], now)  # joins the incident: members grow
    inc.escalation["paged"] = True
    engine.tick(now + timedelta(days=1))  # resolves and closes everything
    saved.restore()
    assert engine.incidents == {inc.id: inc} and engine.alerts == {alert.id: alert}
    assert engine.by_key == {alert.key: alert} and not engine.pending
    assert inc == before_inc and alert == before_alert and engine.incidents[inc.id] is inc


def test_a_change_to_a_held_alert_in_a_failed_step_is_undone_then_stored_by_the_retry() -> None:
    stage = _stage([1])
    now = datetime.now(UTC)
    stage.on_parsed(_event("dev-a", now))
    stage.step(now)
    stage._unsaved = Changes()  # stored
    (alert,) = stage.engine.by_key.values()
    assert alert.severity is Severity.MAJOR
    stage.position = lambda: 2
    stage._signals.append(Signal(alert.rule, alert.key, True, now, device_id="dev-a", severity=Severity.CRITICAL))
    stage._signals.append(Signal("device_event", "door_open:x", True, now.replace(tzinfo=None)))  # raises
    stage._step_safely(now)
    assert alert.severity is Severity.CRITICAL and stage._unsaved.alerts.get(alert.id) is alert  # not lost
    (inc,) = stage.engine.incidents.values()
    assert inc.severity is Severity.CRITICAL and stage._unsaved.incidents.get(inc.id) is inc
    assert [s.key for s, _ in stage._refused] == ["door_open:x"] and stage._step_seq == 2
