"""Officers' actions and the engine's loading on incidents and alerts the engine never makes itself, but an
older version, a hand repair or a partial clean-up may leave (found by tests/integration/test_action_fuzz.py).

Before: resolving an incident with no live alert raised KeyError in the action path (answered 503); closing a
resolved incident with a live alert left the alert open under a closed incident (held in memory for good); a
row with a severity the engine does not know, or escalation state or evidence that is not an object, raised on
load, and the engine never loaded (every action answered 503 "still loading"); so did a policy for an
unknown severity and a silence whose matchers were not an object or named a field alerts do not have.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ioc.alerts.engine import AlertEngine
from ioc.alerts.escalation import usable_policy
from ioc.alerts.from_rows import alert_from_row, incident_from_row
from ioc.alerts.model import Alert, AlertError, Incident, Severity, State, rank
from ioc.alerts.silences import usable_silence

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def _incident(state: State) -> Incident:
    return Incident(7, "odd:7", "power", Severity.MAJOR, state, "legacy", T0, T0,
                    resolved_at=T0 if state == State.RESOLVED else None)


def _alert(alert_id: int, state: State) -> Alert:
    return Alert(alert_id, f"k:{alert_id}", "mains_power_lost", "power", Severity.MAJOR, state, "t", "e", T0, T0,
                 device_id="odd-ghost", incident_id=7, resolved_at=T0 if state == State.RESOLVED else None)


def _loaded(state: State, *alerts: Alert) -> AlertEngine:
    eng = AlertEngine()
    eng.load(list(alerts), [_incident(state)], 100, 100)
    return eng


@pytest.mark.parametrize(("state", "members"), [(State.OPEN, []), (State.ACKNOWLEDGED, []),
                                                (State.OPEN, [State.RESOLVED]), (State.OPEN, [State.CLOSED])])
def test_resolving_an_incident_without_a_live_alert_resolves_it(state: State, members: list[State]) -> None:
    eng = _loaded(state, *(_alert(i, s) for i, s in enumerate(members, 1)))
    now = T0 + timedelta(minutes=5)
    ch = eng.resolve(7, "an", "cleared by hand", now)
    inc = ch.incidents[7]  # the KeyError the action path raised
    assert inc.state == State.RESOLVED and inc.resolved_at == now and inc.updated_at == now
    assert [(e.action, e.actor, e.note) for e in ch.audit] == [("incident_resolved", "an", "cleared by hand")]
    with pytest.raises(AlertError, match="already resolved"):
        eng.resolve(7, "an", None, now)
    eng.close(7, "an", None, now)
    assert 7 not in eng.incidents  # forgotten once closed


def test_closing_a_resolved_incident_closes_its_live_alerts_too() -> None:
    eng = _loaded(State.RESOLVED, _alert(1, State.OPEN), _alert(2, State.RESOLVED), _alert(3, State.ACKNOWLEDGED))
    assert eng.by_key.keys() == {"k:1", "k:3"}
    now = T0 + timedelta(minutes=5)
    ch = eng.close(7, "an", "legacy row", now)
    assert {a.id: a.state for a in ch.alerts.values()} == {1: State.CLOSED, 2: State.CLOSED, 3: State.CLOSED}
    assert sorted(e.action for e in ch.audit) == ["alert_resolved", "alert_resolved", "closed"]
    assert not eng.by_key and 7 not in eng.incidents and not eng.alerts  # was held in memory, closed, for good


def test_the_timer_closing_a_resolved_incident_closes_its_live_alerts_too() -> None:
    eng = _loaded(State.RESOLVED, _alert(1, State.OPEN))
    ch = eng.tick(T0 + timedelta(days=2))
    assert ch.incidents[7].state == State.CLOSED and ch.alerts[1].state == State.CLOSED
    assert 7 not in eng.incidents and not eng.by_key


def _incident_row(**kw: Any) -> dict[str, Any]:
    return {"id": 7, "group_key": "g", "category": "power", "severity": "major", "state": "open", "title": "t",
            "district": None, "started_at": T0, "updated_at": T0, "resolved_at": None, "closed_at": None,
            "acked_by": None, "acked_at": None, "assignee": None, "suppressed": None, "detail": {}, **kw}


def _alert_row(**kw: Any) -> dict[str, Any]:
    return {"id": 1, "dedupe_key": "k", "rule": "mains_power_lost", "category": "power", "severity": "major",
            "state": "open", "title": "t", "explanation": "e", "device_id": None, "kind": None, "district": None,
            "incident_id": 7, "started_at": T0, "last_seen_at": T0, "resolved_at": None, "closed_at": None,
            "acked_by": None, "acked_at": None, "assignee": None, "flaps": 0, "suppressed": None, "evidence": {},
            **kw}


def test_rows_the_model_cannot_hold_as_they_are_are_read_leniently() -> None:
    assert incident_from_row(_incident_row(severity="bogus")).severity == Severity.INFO  # ranked lowest, as in SQL
    assert rank("bogus") == -1 and rank("critical") == 4
    assert incident_from_row(_incident_row(detail={"escalation": "x"})).escalation == {}
    assert incident_from_row(_incident_row(detail=[])).escalation == {}
    assert incident_from_row(_incident_row(detail={"escalation": {"paged": True}})).escalation == {"paged": True}
    odd = alert_from_row(_alert_row(evidence="x"))
    assert odd.evidence == {"stored": "x"} and odd.lat is None
    assert alert_from_row(_alert_row(evidence={"_lat": 20.8, "_lon": 106.6, "v": 1})).evidence == {"v": 1}


def _policy_row(**kw: Any) -> dict[str, Any]:
    return {"id": "p", "name": "p", "min_severity": "minor", "steps": [{"after_min": 0, "level": 1}], "repeat": 0,
            "channels": ["email"], **kw}


def _silence_row(matchers: Any) -> dict[str, Any]:
    return {"id": 3, "matchers": matchers, "starts_at": T0, "ends_at": T0 + timedelta(days=1), "reason": "r",
            "author": "a", "created_at": T0, "deleted_at": None}


def test_configuration_rows_the_engine_cannot_use_are_left_out() -> None:
    """A policy for an unknown severity kept the engine from loading; a silence matching on a field alerts lack
    (or not an object) raised on load and at every tick; an empty one would have muted the whole city."""
    assert usable_policy(_policy_row())
    assert not usable_policy(_policy_row(min_severity="bogus"))
    assert not usable_policy(_policy_row(channels="email"))
    assert not usable_policy(_policy_row(channels=[1]))
    for matchers in ({"bogus": "x"}, "x", [], {}, {"device_id": ""}):
        assert usable_silence(_silence_row(matchers)) is None, matchers
    sil = usable_silence(_silence_row({"device_id": 5}))
    assert sil is not None and sil.matchers == {"device_id": "5"}
    eng = _loaded(State.OPEN, _alert(1, State.OPEN))
    eng.set_silences([sil], T0)  # a usable one still works
    assert not eng.alerts[1].suppressed
