"""Incidents on the live feed (ioc/alerts/feed_view.py): members capped as the REST route caps them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ioc.alerts.config import AlertsConfig
from ioc.alerts.feed_view import bounded_members, snapshot_section
from ioc.alerts.model import Alert, Incident, Severity, State
from ioc.alerts.stage import AlertStage, _member
from ioc.geo import City
from ioc.live.filters import Subscription
from ioc.live.hub import LiveHub

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 7, tzinfo=UTC)


def _alert(i: int, severity: str = "minor", state: str = "open") -> Alert:
    return Alert(i, f"k{i}", "mains_power_lost", "power", Severity(severity), State(state), f"alert {i}", "",
                 T0 + timedelta(seconds=i), T0, device_id=f"bts-{i % 7}", kind="bts", incident_id=1)


def test_members_kept_live_then_most_severe_then_newest_in_the_incidents_order() -> None:
    alerts = [_alert(i, "critical" if i in (3, 9) else "minor", "resolved" if i % 2 == 0 else "open")
              for i in range(1, 21)]
    inc = Incident(1, "power:X", "power", Severity.CRITICAL, State.OPEN, "outage", T0, T0,
                   members=[a.id for a in reversed(alerts)])
    kept, counts = bounded_members(inc, alerts, 4)
    # live (odd ids) first; of them the critical 3 and 9, then the newest minor ones 19, 17; in the incident's order
    assert [a.id for a in kept] == [19, 17, 9, 3]
    assert counts == {"member_count": 20, "members_omitted": 16, "members_truncated": True, "device_count": 7,
                      "devices": ["bts-0", "bts-1", "bts-2", "bts-3"]}
    kept, counts = bounded_members(inc, alerts, 50)
    assert kept == alerts and counts["members_truncated"] is False and counts["members_omitted"] == 0
    assert len(counts["devices"]) == 7


def test_the_stage_pushes_and_snapshots_capped_views() -> None:
    city = City.load()
    hub = LiveHub(city.district_of)
    hub.snapshot_incidents, hub.incident_members = 2, 3
    stage = AlertStage(hub, None, city, AlertsConfig())
    engine = stage.engine
    for n in range(1, 5):
        inc = Incident(n, f"g{n}", "power", Severity.MAJOR if n > 1 else Severity.CRITICAL, State.OPEN, f"i{n}",
                       T0 + timedelta(minutes=n), T0)
        members = [_alert(n * 100 + i) for i in range(10 if n == 1 else 1)]
        for a in members:
            engine.alerts[a.id] = a
        inc.members = [a.id for a in members]
        engine.incidents[n] = inc
    view = stage.feed_view(engine.incidents[1])
    assert len(view["members"]) == 3 and view["member_count"] == 10 and view["members_omitted"] == 7
    assert view["members"][0] == _member(engine.alerts[view["members"][0]["alert_id"]])
    snap = stage.snapshot()
    assert [i["id"] for i in snap["incidents"]] == [1, 2]
    assert snap["incidents_total"] == 4 and snap["incidents_truncated"] is True
    frame = orjson.loads(hub.snapshot_frame(Subscription()))
    assert frame["incidents_total"] == 4 and len(frame["incidents"][0]["members"]) == 3


def test_snapshot_section_says_what_it_left_out() -> None:
    assert snapshot_section([{"id": 1}], 1, 5) == {"incidents": [{"id": 1}], "incidents_total": 1,
                                                  "incidents_truncated": False}


def test_snapshots_add_the_newest_unacknowledged_critical_incidents_the_cut_left_out() -> None:
    """A backlog of old critical incidents fills the snapshot's cut; the newest open critical ones ride beyond it
    (acknowledged ones and lesser severities do not), on the leader's stage and on a replica alike."""
    from ioc.alerts.feed_view import SNAPSHOT_NEWEST_CRITICAL
    from ioc.cluster.sync import ReplicaSync

    city = City.load()
    hub = LiveHub(city.district_of)
    hub.snapshot_incidents = 5
    stage = AlertStage(hub, None, city, AlertsConfig())
    replica = ReplicaSync("", None, hub, lambda _code: None, "p")
    n = 40
    for i in range(1, n + 1):
        sev = Severity.MAJOR if i == n - 1 else Severity.CRITICAL
        state = State.ACKNOWLEDGED if i == n - 2 else State.OPEN
        inc = Incident(i, f"g{i}", "power", sev, state, f"i{i}", T0 + timedelta(minutes=i), T0)
        stage.engine.incidents[i] = inc
        view = inc.to_dict()
        replica._keep({"severity": sev.value, "started_at": inc.started_at, "id": i}, view,
                      orjson.dumps(view).decode())
    newest = [n, *range(n - 3, n - 3 - SNAPSHOT_NEWEST_CRITICAL + 1, -1)]
    snap = stage.snapshot()
    assert [i["id"] for i in snap["incidents"]] == [1, 2, 3, 4, 5, *newest]
    assert snap["incidents_total"] == n and snap["incidents_truncated"] is True
    section = replica.snapshot()
    assert [i["id"] for i in orjson.loads(orjson.dumps(section))["incidents"]] == [1, 2, 3, 4, 5, *newest]
