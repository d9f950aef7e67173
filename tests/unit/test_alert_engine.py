"""The alert engine on plain signals with a controlled clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from analytics.findings import Finding
from ingest.records import DeviceEvent, Reading, StatusUpdate
from ioc.alerts import rules
from ioc.alerts.engine import AlertEngine
from ioc.alerts.escalation import Policy, Shift
from ioc.alerts.liveness import Liveness
from ioc.alerts.model import AlertError, Severity, State
from ioc.alerts.silences import Silence

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
DEVICES = {f"BTS-KA-{i:02d}": ("bts", "KA", 20.80 + i * 0.001, 106.62) for i in range(40)}
DEVICES |= {f"BTS-LC-{i:02d}": ("bts", "LC", 20.85, 106.68 + i * 0.001) for i in range(5)}
DEVICES |= {"CAM-KA-01": ("camera", "KA", 20.8005, 106.6205), "CAM-LC-01": ("camera", "LC", 20.85, 106.70)}
DEVICES |= {f"TRF-{i}": ("traffic", "NQ", 20.84 + i * 0.005, 106.70) for i in range(4)}


def info(device_id: str) -> tuple[str | None, str | None, float | None, float | None]:
    return DEVICES.get(device_id, (None, None, None, None))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def power_lost(dev: str, t: float) -> list:
    return rules.from_event(DeviceEvent(dev, "bts", at(t), "mains_power_lost", "major", {}), info)


def power_back(dev: str, t: float) -> list:
    return rules.from_event(DeviceEvent(dev, "bts", at(t), "mains_power_restored", "info", {}), info)


def camera(dev: str, label: str, t: float) -> list:
    return rules.from_health(dev, label, 0.9, at(t), info)


def engine(**kw) -> AlertEngine:
    eng = AlertEngine()
    eng.shifts = [Shift(1, "an", 1, at(-3600), at(86400)), Shift(2, "binh", 2, at(-3600), at(86400))]
    return eng


def test_flapping_signal_raises_one_alert_and_counts_flaps() -> None:
    eng = engine()
    pages = []
    for k in range(20):  # lost / restored every 20 s: shorter than the 120 s hysteresis
        pages += eng.observe(power_lost("BTS-LC-00", 40 * k), at(40 * k)).pages
        eng.observe(power_back("BTS-LC-00", 40 * k + 20), at(40 * k + 20))
        pages += eng.tick(at(40 * k + 30)).pages
    assert len([a for a in eng.alerts.values()]) == 1
    alert = next(iter(eng.alerts.values()))
    assert alert.state == State.OPEN and alert.flaps == 19
    assert [p.reason for p in pages] == ["firing"]
    # It stays clear: resolved once the hysteresis has run out, and machine receivers hear about it.
    ch = eng.tick(at(40 * 19 + 20 + 121))
    assert alert.state == State.RESOLVED
    assert [p.reason for p in ch.pages] == ["resolved"]


def test_district_power_outage_is_one_incident_and_explains_offline_sites() -> None:
    eng = engine()
    pages = []
    for i, dev in enumerate(d for d in DEVICES if d.startswith("BTS-KA")):
        pages += eng.observe(power_lost(dev, i), at(i)).pages
    incidents = [i for i in eng.incidents.values()]
    assert len(incidents) == 1
    inc = incidents[0]
    assert len(inc.members) == 40 and inc.group_key == "power:KA"
    assert inc.title.startswith("Mains power lost at 40 BTS")
    assert len(pages) == 1 and pages[0].level == 1
    # An hour later the batteries are flat: the sites going offline join the power incident, quietly.
    offline = [StatusUpdate(f"BTS-KA-{i:02d}", "bts", at(3600), "offline", "battery exhausted") for i in range(10)]
    for rec in offline:
        eng.observe(rules.from_status(rec, info), at(3600))
    ch = eng.tick(at(3631))
    assert len(eng.incidents) == 1 and len(inc.members) == 50
    offline_alerts = [a for a in eng.alerts.values() if a.rule == "device_offline"]
    assert len(offline_alerts) == 10 and all(a.suppressed == f"inhibited:{inc.id}" for a in offline_alerts)
    assert not [p for p in ch.pages if p.reason == "firing"]
    assert ", 10 offline" in inc.title


def test_devices_without_a_known_district_are_not_merged_into_one_incident() -> None:
    eng = engine()
    for i in range(5):  # not in DEVICES: no district, no position yet
        eng.observe(power_lost(f"BTS-NEW-{i}", i), at(i))
        eng.observe(rules.from_status(StatusUpdate(f"CAM-NEW-{i}", "camera", at(i), "offline", "lwt"), info), at(i))
    eng.tick(at(200))
    keys = sorted(inc.group_key for inc in eng.incidents.values())
    assert len(keys) == 10 and "power:-" not in keys
    assert "power:device:BTS-NEW-0" in keys and "offline:camera:device:CAM-NEW-0" in keys


def test_camera_blackout_beside_a_powerless_bts_is_linked() -> None:
    eng = engine()
    eng.observe(power_lost("BTS-KA-00", 0), at(0))
    eng.observe(camera("CAM-KA-01", "black", 60), at(60))
    eng.observe(camera("CAM-LC-01", "black", 60), at(60))  # another district: its own incident
    assert len(eng.incidents) == 2
    power = next(i for i in eng.incidents.values() if i.category == "power")
    cam = next(a for a in eng.alerts.values() if a.device_id == "CAM-KA-01")
    assert cam.incident_id == power.id and "linked" in power.title


def test_silence_suppresses_then_expires() -> None:
    eng = engine()
    sil = Silence(1, {"district": "LC"}, at(0), at(600), "substation maintenance", "an")
    eng.set_silences([sil], at(0))
    ch = eng.observe(power_lost("BTS-LC-01", 10), at(10))
    alert = next(iter(eng.alerts.values()))
    inc = eng.incidents[alert.incident_id]
    assert alert.suppressed == "silenced:1" and inc.suppressed == "silenced:1" and not ch.pages
    assert not eng.tick(at(300)).pages
    ch = eng.tick(at(600))  # the window ends with the power still off: now it pages
    assert alert.suppressed is None and inc.suppressed is None
    assert [p.reason for p in ch.pages] == ["firing"]


def test_escalation_levels_repeat_and_stop_on_ack() -> None:
    eng = engine()
    eng.policies = [Policy("p", "major", Severity.MAJOR, [{"after_min": 0, "level": 1}, {"after_min": 10, "level": 2}],
                           repeat=1)]
    pages = list(eng.observe(power_lost("BTS-LC-02", 0), at(0)).pages)
    for minute in range(1, 60):
        pages += eng.tick(at(60 * minute)).pages
        if minute == 35:
            inc = next(iter(eng.incidents.values()))
            eng.acknowledge(inc.id, "binh", "on my way", at(60 * minute))
    got = [(p.reason, p.level, round((p.ts - T0).total_seconds() / 60)) for p in pages]
    assert got == [("firing", 1, 0), ("escalation", 2, 10), ("escalation", 1, 20), ("escalation", 2, 30)]
    inc = next(iter(eng.incidents.values()))
    assert inc.state == State.ACKNOWLEDGED and inc.acked_by == "binh"
    assert all(eng.alerts[m].state == State.ACKNOWLEDGED for m in inc.members)


def test_pending_for_offline_needs_thirty_seconds() -> None:
    eng = engine()
    eng.observe(rules.from_status(StatusUpdate("CAM-LC-01", "camera", at(0), "offline", "lwt"), info), at(0))
    assert not eng.alerts
    eng.observe(rules.from_status(StatusUpdate("CAM-LC-01", "camera", at(10), "online", None), info), at(10))
    eng.tick(at(40))
    assert not eng.alerts  # back within 30 s: nothing to tell
    eng.observe(rules.from_status(StatusUpdate("CAM-LC-01", "camera", at(50), "offline", "lwt"), info), at(50))
    eng.tick(at(81))
    assert [a.rule for a in eng.alerts.values()] == ["device_offline"]


def test_traffic_jam_spreading_upstream_is_one_incident() -> None:
    eng = engine()
    for i in range(4):
        f = Finding(f"TRF-{i}", "speed_kmh", at(120 * i), "speed_collapse", 0.9, "speed 8 km/h vs usual 45±5",
                    {"value": 8.0, "expected": 45.0, "spread": 5.0})
        eng.observe(rules.from_finding(f, info), at(120 * i))
    assert len(eng.incidents) == 1
    inc = next(iter(eng.incidents.values()))
    assert len(inc.members) == 4 and "spreading" in inc.title
    # speed back to normal on every sensor: the jam resolves after its hysteresis
    for i in range(4):
        rec = Reading(f"TRF-{i}", "traffic", at(2000), {"speed_kmh": 44.0, "occupancy_pct": 12.0})
        eng.observe(rules.clears_from_reading(rec, eng.live_evidence, info), at(2000))
    eng.tick(at(2301))
    assert inc.state == State.RESOLVED


def test_one_missing_metric_is_context_and_clears_when_it_returns() -> None:
    eng = engine()
    f = Finding("TRF-1", "speed_kmh", at(0), "silence", 0.8, "no speed data for 5 min", {})
    eng.observe(rules.from_finding(f, info), at(0))
    alert = next(iter(eng.alerts.values()))
    assert alert.rule == "metric_missing" and alert.incident_id is None
    rec = Reading("TRF-1", "traffic", at(100), {"speed_kmh": 40.0})
    eng.observe(rules.clears_from_reading(rec, eng.live_evidence, info), at(100))
    eng.tick(at(131))
    assert alert.state == State.RESOLVED


def test_a_device_that_stops_talking_is_silent_after_a_few_of_its_usual_gaps() -> None:
    live = Liveness(factor=3.5, min_s=90.0)
    for k in range(10):  # a BTS reporting every minute...
        assert not live.arrived("BTS-LC-00", at(60 * k))
    for k in range(40):  # ...and a camera sending a snapshot every 10 s
        live.arrived("CAM-LC-01", at(10 * k))
    assert live.overdue(at(540 + 200)) == [("CAM-LC-01", 350.0, 10.0)]  # BTS: 200 s < 3.5 x 60 s
    assert [d for d, _, _ in live.overdue(at(540 + 211))] == ["BTS-LC-00"]
    assert live.overdue(at(2000)) == []  # reported once per silence
    assert live.arrived("BTS-LC-00", at(2001))  # back: the silence is over
    live.state("CAM-LC-01", "offline")
    live.arrived("CAM-LC-01", at(2002))
    live.state("CAM-LC-01", "offline")
    assert live.overdue(at(9000)) == [("BTS-LC-00", 6999.0, 60.0)]  # an offline device is not also silent


def test_arrivals_survive_a_restart_and_the_downtime_is_not_silence() -> None:
    before = Liveness(factor=3.5, min_s=90.0)
    for k in range(10):
        before.arrived("BTS-LC-00", at(60 * k))
        before.arrived("BTS-LC-01", at(60 * k))
    after = Liveness(factor=3.5, min_s=90.0)
    after.arrived("BTS-LC-01", at(7200))  # heard since the restart: what it learned live is kept
    assert after.restore(before.to_state()) == 1
    restart = at(7200)  # two hours down
    assert after.overdue(at(7200 + 100), since=restart) == []
    late = after.overdue(at(7200 + 211), since=restart)  # 3.5 usual gaps after the restart
    assert [(d, round(s)) for d, s, _ in late] == [("BTS-LC-00", 7200 + 211 - 540)]
    with pytest.raises(ValueError):
        after.restore(b'{"version": 1, "devices": {"x": [1]}}')


def test_silent_device_alert_fires_and_clears_in_the_engine() -> None:
    eng = engine()
    eng.observe([rules.silent("BTS-LC-03", 240.0, 60.0, at(0), info)], at(0))
    alert = next(iter(eng.alerts.values()))
    assert alert.rule == "device_silent" and alert.category == "offline" and "4 min" in alert.explanation
    eng.observe([rules.silent_over("BTS-LC-03", at(30), info)], at(30))
    eng.tick(at(61))
    assert alert.state == State.RESOLVED


def test_an_obstruction_fires_only_when_it_stays() -> None:
    eng = engine()
    for t, label in ((0, "occlusion"), (10, "occlusion"), (20, "ok"), (30, "occlusion"), (40, "ok")):
        eng.observe(camera("CAM-LC-01", label, t), at(t))  # a bus standing at the lights, twice
        eng.tick(at(t + 5))
    assert not eng.alerts
    for t in range(100, 140, 10):  # a covered lens stays covered
        eng.observe(camera("CAM-LC-01", "occlusion", t), at(t))
        eng.tick(at(t + 5))
    alert = next(iter(eng.alerts.values()))
    assert alert.started_at == at(100) and "covered" in alert.title  # it started when first seen
    assert alert.incident_id in eng.incidents


def test_officer_actions_and_their_errors() -> None:
    eng = engine()
    eng.observe(camera("CAM-LC-01", "black", 0), at(0))
    inc = next(iter(eng.incidents.values()))
    eng.assign(inc.id, "an", "binh", at(5))
    ch = eng.comment(inc.id, "an", "team dispatched to clean the lens", at(6))
    assert ch.audit[0].action == "commented"
    with pytest.raises(AlertError):
        eng.close(inc.id, "an", None, at(7))
    eng.resolve(inc.id, "an", "lens cleaned", at(8))
    assert inc.state == State.RESOLVED
    eng.close(inc.id, "an", None, at(9))
    assert inc.id not in eng.incidents  # closed incidents leave memory (history is in the database)
    with pytest.raises(AlertError):
        eng.acknowledge(inc.id, "an", None, at(10))


def spike(dev: str, series: str, t: float, value: float = 3000.0, expected: float = 1200.0) -> list:
    f = Finding(dev, series, at(t), "spike", 0.7, f"{series} {value} vs usual {expected}±100",
                {"value": value, "expected": expected, "spread": 100.0})
    return rules.from_finding(f, info)


def test_a_statistical_anomaly_alone_is_listed_not_queued_and_auto_clears() -> None:
    eng = engine()
    ch = eng.observe(spike("TRF-2", "flow_veh_h", 0), at(0))
    alert = next(iter(eng.alerts.values()))
    assert alert.rule == "anomaly" and alert.severity == Severity.INFO
    assert alert.incident_id is None and not eng.incidents and not ch.pages  # nothing on the officers' queue
    eng.tick(at(1799))
    assert alert.live
    eng.tick(at(1800))
    assert alert.state == State.RESOLVED
    eng.tick(at(1800 + 3600))  # closed an hour later, and gone from memory (history is in the database)
    assert alert.state == State.CLOSED and alert.id not in eng.alerts


def test_one_device_one_problem_context_joins_the_incident_before_and_after() -> None:
    eng = engine()
    eng.observe(spike("TRF-1", "occupancy_pct", 0, 80.0, 20.0), at(0))  # the oddity comes first...
    jam = Finding("TRF-1", "speed_kmh", at(30), "speed_collapse", 0.9, "speed 8 km/h vs usual 45±5",
                  {"value": 8.0, "expected": 45.0, "spread": 5.0})
    eng.observe(rules.from_finding(jam, info), at(30))  # ...the jam opens the incident and adopts it
    eng.observe(spike("TRF-1", "queue_len_m", 60, 900.0, 50.0), at(60))  # and later context joins it
    assert len(eng.incidents) == 1
    inc = next(iter(eng.incidents.values()))
    assert len(inc.members) == 3 and inc.category == "traffic"
    assert inc.title.startswith("Traffic jam at TRF-1")


def test_jams_on_the_same_road_are_one_incident_even_far_apart() -> None:
    roads = {"TRF-0": "ql5", "TRF-1": "ql5", "TRF-2": "ql10"}
    positions = {"TRF-0": (20.80, 106.60), "TRF-1": (20.80, 106.68), "TRF-2": (20.90, 106.80)}  # ~8 km apart

    def where(device_id: str) -> tuple[str | None, str | None, float | None, float | None]:
        lat, lon = positions[device_id]
        return "traffic", "NQ", lat, lon

    eng = AlertEngine(road_of=lambda lat, lon: next((roads[d] for d, p in positions.items() if p == (lat, lon)),
                                                    None))
    for i, dev in enumerate(positions):
        f = Finding(dev, "speed_kmh", at(200 * i), "speed_collapse", 0.9, "speed 8 km/h", {"value": 8.0,
                                                                                          "expected": 45.0})
        eng.observe(rules.from_finding(f, where), at(200 * i))
    groups = sorted(len(i.members) for i in eng.incidents.values())
    assert groups == [1, 2]  # QL5 spreading is one incident; QL10 is another road


def test_bts_kpi_alerts_need_the_operator_limit() -> None:
    eng = engine()
    eng.observe(spike("BTS-LC-01", "drop_call_rate_pct", 0, 0.9, 0.3), at(0))  # odd, but harmless
    eng.observe(spike("BTS-LC-02", "drop_call_rate_pct", 0, 6.5, 0.4), at(0))
    eng.observe(spike("CAM-LC-01", "temperature_c", 0, 51.0, 35.0), at(0))  # a camera: no BTS KPI rule
    by_rule = sorted((a.rule, a.device_id) for a in eng.alerts.values())
    assert by_rule == [("anomaly", "BTS-LC-01"), ("anomaly", "CAM-LC-01"), ("kpi_degraded", "BTS-LC-02")]
    assert len(eng.incidents) == 1


def test_a_problem_back_soon_after_it_resolved_reopens_its_incident() -> None:
    eng = engine()
    pages, audit = [], []

    def run(ch) -> None:
        pages.extend(p.reason for p in ch.pages)
        audit.extend(e.action for e in ch.audit)

    # mains lost, back a minute later, resolved after the 120 s hysteresis; lost again ten minutes on
    run(eng.observe(power_lost("BTS-LC-03", 0), at(0)))
    run(eng.observe(power_back("BTS-LC-03", 60), at(60)))
    run(eng.tick(at(200)))
    inc = next(iter(eng.incidents.values()))
    assert inc.state == State.RESOLVED
    run(eng.observe(power_lost("BTS-LC-03", 600), at(600)))
    assert list(eng.incidents) == [inc.id] and inc.state == State.OPEN and inc.resolved_at is None
    assert len(inc.members) == 2  # both episodes, in one incident's history
    assert audit.count("incident_opened") == 1 and audit.count("incident_reopened") == 1
    assert pages == ["firing", "resolved", "reopened"]  # nobody had taken it: it pages again, saying so
    assert inc.escalation["reopened"] == 1


def test_a_reopened_incident_stays_with_the_officer_who_took_it() -> None:
    eng = engine()
    ch = eng.observe(camera("CAM-LC-01", "black", 0), at(0))
    ch.merge(eng.tick(at(120)))
    inc = next(iter(eng.incidents.values()))
    eng.acknowledge(inc.id, "an", None, at(150))
    eng.observe(camera("CAM-LC-01", "ok", 200), at(200))
    eng.tick(at(2000))
    assert inc.state == State.RESOLVED
    again = eng.observe(camera("CAM-LC-01", "black", 2100), at(2100))
    again.merge(eng.tick(at(2300)))
    assert inc.state == State.ACKNOWLEDGED and inc.acked_by == "an" and inc.escalation["reopened"] == 1
    assert again.pages == []
    assert all(eng.alerts[m].state == State.ACKNOWLEDGED for m in inc.members if eng.alerts[m].live)


def test_an_acknowledged_district_incident_reopened_by_another_device_pages_again() -> None:
    eng = engine()
    eng.observe(power_lost("BTS-LC-00", 0), at(0))
    inc = next(iter(eng.incidents.values()))
    eng.acknowledge(inc.id, "an", None, at(30))
    eng.observe(power_back("BTS-LC-00", 60), at(60))
    eng.tick(at(200))
    assert inc.state == State.RESOLVED
    ch = eng.observe(power_lost("BTS-LC-01", 600), at(600))  # another site of the district: nobody took it
    assert list(eng.incidents) == [inc.id] and inc.state == State.OPEN and inc.acked_by is None
    assert [p.reason for p in ch.pages] == ["reopened"]


def test_a_problem_back_long_after_is_a_new_incident() -> None:
    eng = engine()
    eng.observe(power_lost("BTS-LC-04", 0), at(0))
    eng.observe(power_back("BTS-LC-04", 60), at(60))
    eng.tick(at(200))
    first = next(iter(eng.incidents.values()))
    eng.observe(power_lost("BTS-LC-04", 200 + 1801), at(200 + 1801))
    assert first.state == State.RESOLVED and len(eng.incidents) == 2


def test_a_replayed_alarm_older_than_the_resolution_reopens_nothing() -> None:
    """Input is at least once: after a failover the next leader may be handed an alarm again."""
    eng = engine()
    eng.observe(power_lost("BTS-LC-02", 0), at(0))
    inc = next(iter(eng.incidents.values()))
    eng.resolve(inc.id, "an", "generator running", at(100))
    ch = eng.observe(power_lost("BTS-LC-02", 0), at(105))  # the same alarm again (its time is the device's)
    ch.merge(eng.tick(at(400)))
    assert not ch and inc.state == State.RESOLVED and len(eng.incidents) == 1 and eng.replayed == 1
    assert not eng.by_key and not eng.pending
    eng.observe(power_lost("BTS-LC-02", 500), at(500))  # really lost again, after the resolution: reopens
    assert inc.state == State.OPEN and len(inc.members) == 2


def test_the_last_resolutions_survive_a_restart() -> None:
    """A new leader restores each key's last resolution (stored alerts, closed ones too) and ignores replays."""
    first = engine()
    first.observe(power_lost("BTS-LC-01", 0), at(0))
    inc = next(iter(first.incidents.values()))
    first.resolve(inc.id, "an", None, at(100))
    first.close(inc.id, "an", None, at(110))  # closed: the next leader does not load it, only its resolution
    second = engine()
    second.load([], [], 1000, 1000, resolved=dict(first.resolved))
    ch = second.observe(power_lost("BTS-LC-01", 0), at(130))
    assert not ch and not second.incidents and second.replayed == 1
    assert second.observe(power_lost("BTS-LC-01", 200), at(200)).incidents  # a new alarm opens a new incident
    # the restore also learns from the resolved alerts it loads
    from ioc.alerts.model import Alert

    key = power_lost("BTS-KA-00", 0)[0].key
    third = engine()
    third.load([Alert(7, key, "mains_power_lost", "power", Severity.MAJOR, State.RESOLVED, "BTS on battery", "",
                      at(0), at(100), device_id="BTS-KA-00", resolved_at=at(100))], [], 1000, 1000)
    assert third.resolved[key] == at(100)
    third.observe(power_lost("BTS-KA-00", 50), at(150))
    assert not third.by_key and third.replayed == 1
