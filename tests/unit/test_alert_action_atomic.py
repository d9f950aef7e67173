"""An officer's action is all or nothing: one that raises half way leaves the engine as it was and keeps serving.

Before, an action whose engine call raised after its first change (an incident acknowledged, members resolved, an
incident forgotten) left that change in memory with nothing to store: screens and later actions saw a state that
was never stored (a restart reverted it), and a later step could store a half of it (the resolution it was
settling). Here failures are injected inside the engine (no database: a stage without a pool holds what it applies,
``OSError``, which is what shows that the action went through).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ioc.alerts import escalation, officer
from ioc.alerts.config import AlertsConfig
from ioc.alerts.engine import AlertEngine
from ioc.alerts.model import ActionUndone, Changes, Severity, Signal, State
from ioc.alerts.stage import AlertStage
from ioc.geo import City
from ioc.live.hub import LiveHub

pytestmark = pytest.mark.unit

_STATE = ("alerts", "by_key", "incidents", "pending", "resolved", "_dirty", "_resolving", "_by_device", "silences",
          "next_alert_id", "next_incident_id")


class Injected(RuntimeError):
    """The failure a test plants inside the engine."""


def _stage() -> tuple[AlertStage, int]:
    """A loaded stage holding one open, paged incident of two live alerts of one device."""
    city = City.load()
    stage = AlertStage(LiveHub(city.district_of), None, city, AlertsConfig())
    stage.loaded = True
    now = datetime.now(UTC) - timedelta(minutes=5)
    for rule in ("mains_power_lost", "door_open"):
        stage._signals.append(Signal(rule, f"{rule}:dev-a", True, now, device_id="dev-a", kind="bts",
                                     severity=Severity.MAJOR, for_s=0))
    stage.step(now)
    stage._unsaved = Changes()  # stored
    (inc,) = stage.engine.incidents.values()
    assert len(inc.members) == 2 and inc.escalation.get("paged")
    return stage, inc.id


def _state(engine: AlertEngine) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The engine's memory, deep (values) and by identity (what held change sets and screens point at)."""
    deep = {name: copy.deepcopy(getattr(engine, name)) for name in _STATE}
    same = {name: [id(v) for v in getattr(engine, name).values()] for name in ("alerts", "by_key", "incidents")}
    return deep, same


def _act(stage: AlertStage, action: str, incident_id: int, **kw: Any) -> None:
    asyncio.run(stage.act(action, incident_id, "officer-1", kw.pop("note", "n"), **kw))


def _then(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original``, then the injected failure (its changes are made: the worst place to fail)."""
    def call(*args: Any, **kwargs: Any) -> Any:
        original(*args, **kwargs)
        raise Injected("injected")
    return call


def _resolved(stage: AlertStage, incident_id: int) -> None:
    with pytest.raises(OSError):  # applied, held for the database
        _act(stage, "resolve", incident_id)
    stage._unsaved = Changes()


# (action, what fails inside it): every action, at a point after its first change
POINTS: dict[str, tuple[str, Callable[[AlertStage, pytest.MonkeyPatch], None]]] = {
    "ack, after stopping escalation": (
        "ack", lambda s, mp: mp.setattr(escalation, "stop", _then(escalation.stop))),
    "ack, at its audit entry (members acknowledged)": (
        "ack", lambda s, mp: mp.setattr(officer, "AuditEntry", _then(lambda *a: None))),
    "assign, at its audit entry": (
        "assign", lambda s, mp: mp.setattr(officer, "AuditEntry", _then(lambda *a: None))),
    "comment, at its audit entry": (
        "comment", lambda s, mp: mp.setattr(officer, "AuditEntry", _then(lambda *a: None))),
    "resolve, settling (members resolved)": (
        "resolve", lambda s, mp: mp.setattr(s.engine, "_settle", _then(lambda *a: None))),
    "resolve, after resolving the incident": (
        "resolve", lambda s, mp: mp.setattr(s.engine, "_resolve_incident", _then(s.engine._resolve_incident))),
    "resolve, building its answer": (
        "resolve", lambda s, mp: mp.setattr(s, "view_of", _then(lambda *a: None))),
    "close, after closing members": (
        "close", lambda s, mp: mp.setattr(s.engine, "_close_members", _then(s.engine._close_members))),
    "close, after forgetting the incident": (
        "close", lambda s, mp: mp.setattr(s.engine, "_forget", _then(s.engine._forget))),
}


@pytest.mark.parametrize("point", list(POINTS))
def test_an_action_that_raises_half_way_is_undone_and_the_next_one_applies(point: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    action, inject = POINTS[point]
    stage, incident_id = _stage()
    if action == "close":
        _resolved(stage, incident_id)
    before = _state(stage.engine)
    with monkeypatch.context() as mp:
        inject(stage, mp)
        with pytest.raises(ActionUndone, match="Injected"):
            _act(stage, action, incident_id, assignee="officer-2", action_id=7, epoch=1)
    assert _state(stage.engine) == before
    assert not stage._unsaved  # nothing partial waits to be stored
    with pytest.raises(OSError):  # the same action, now applied (and held: no database here)
        _act(stage, action, incident_id, assignee="officer-2")
    assert stage._unsaved.audit and not stage._unsaved.actions
    if action == "close":
        assert incident_id not in stage.engine.incidents and not stage.engine.alerts
    elif action in ("ack", "resolve"):
        inc = stage._unsaved.incidents[incident_id]
        members = [stage.engine.alerts[m] for m in inc.members]
        want = State.ACKNOWLEDGED if action == "ack" else State.RESOLVED
        assert inc.state is want and {a.state for a in members} == {want}


def test_a_resolution_undone_is_not_finished_by_the_next_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step after a failed resolve does not settle it: no incident resolved in the officer's name."""
    stage, incident_id = _stage()
    with monkeypatch.context() as mp:
        mp.setattr(stage.engine, "_settle", _then(lambda *a: None))
        with pytest.raises(ActionUndone):
            _act(stage, "resolve", incident_id)
    ch = stage.step(datetime.now(UTC))
    assert not [e for e in ch.audit if e.actor == "officer-1"]
    assert stage.engine.incidents[incident_id].state is State.OPEN
    assert all(a.live for a in stage.engine.alerts.values())


def test_a_refused_action_changes_nothing_and_unknown_actions_are_refused_before() -> None:
    stage, incident_id = _stage()
    before = _state(stage.engine)
    with pytest.raises(officer.AlertError):
        _act(stage, "close", incident_id)  # not resolved
    with pytest.raises(ValueError, match="unknown action"):
        _act(stage, "explode", incident_id)
    assert _state(stage.engine) == before and not stage._unsaved


def test_silences_that_raise_half_way_are_undone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A silence change re-evaluates every live incident: one that raises part way leaves none re-silenced."""
    from ioc.alerts.silences import Silence

    stage, _ = _stage()
    now = datetime.now(UTC)
    before = _state(stage.engine)
    monkeypatch.setattr(stage.engine, "_resuppress", _then(stage.engine._resuppress))  # one re-silenced, then fails
    sil = Silence(9, {"device_id": "dev-a"}, now - timedelta(hours=1), now + timedelta(hours=1), "works", "admin")
    with pytest.raises(Injected):
        stage._set_silences([sil], now)
    assert _state(stage.engine) == before and not stage._unsaved
