"""The alert engine at a province-wide outage: thousands of alerts in one step group, title and page as few do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingest.records import DeviceEvent, StatusUpdate
from ioc.alerts import rules
from ioc.alerts.engine import AlertEngine
from ioc.alerts.escalation import Shift
from ioc.alerts.model import Changes, Signal, State
from ioc.alerts.silences import Silence

pytestmark = pytest.mark.unit

T0 = datetime(2026, 9, 14, 2, 0, tzinfo=UTC)
DISTRICTS = ("D1", "D2", "D3", "D4", "D5", "D6")
# 500 BTS and 100 cameras per district; cameras stand 20 km away from the BTS (not linked to the power incident)
DEVICES = {f"BTS-{d}-{i:03d}": ("bts", d, 20.0 + k * 0.5 + i * 1e-4, 106.0) for k, d in enumerate(DISTRICTS)
           for i in range(500)}
DEVICES |= {f"CAM-{d}-{i:03d}": ("camera", d, 20.0 + k * 0.5 + i * 1e-4, 106.2) for k, d in enumerate(DISTRICTS)
            for i in range(100)}


def info(device_id: str) -> tuple[str | None, str | None, float | None, float | None]:
    return DEVICES.get(device_id, (None, None, None, None))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def engine() -> AlertEngine:
    eng = AlertEngine()
    eng.shifts = [Shift(1, "an", 1, at(-3600), at(86400)), Shift(2, "binh", 2, at(-3600), at(86400))]
    return eng


def outage(t: float) -> list[Signal]:
    """Every BTS loses mains power and every camera drops off the network."""
    signals: list[Signal] = []
    for dev, (kind, _, _, _) in DEVICES.items():
        if kind == "bts":
            signals += rules.from_event(DeviceEvent(dev, "bts", at(t), "mains_power_lost", "major", {}), info)
        else:
            signals += rules.from_status(StatusUpdate(dev, "camera", at(t), "offline", "link down"), info)
    return signals


def restored(t: float) -> list[Signal]:
    signals: list[Signal] = []
    for dev, (kind, _, _, _) in DEVICES.items():
        if kind == "bts":
            signals += rules.from_event(DeviceEvent(dev, "bts", at(t), "mains_power_restored", "info", {}), info)
        signals += rules.from_status(StatusUpdate(dev, kind, at(t), "online", None), info)
    return signals


def summary(eng: AlertEngine) -> list[tuple[str, int, str, str, str | None]]:
    return sorted((i.group_key, len(i.members), i.title, i.state.value, i.suppressed) for i in eng.incidents.values())


def test_3600_alerts_in_one_step_group_into_district_incidents_with_their_counts() -> None:
    eng = engine()
    ch = eng.observe(outage(0), at(0))
    ch.merge(eng.tick(at(31)))  # cameras' offline holds 30 s before it fires
    assert len(eng.alerts) == 3600
    power = sorted((i for i in eng.incidents.values() if i.category == "power"), key=lambda i: i.group_key)
    offline = sorted((i for i in eng.incidents.values() if i.category == "offline"), key=lambda i: i.group_key)
    assert [i.group_key for i in power] == [f"power:{d}" for d in DISTRICTS]
    assert [i.group_key for i in offline] == [f"offline:camera:{d}" for d in DISTRICTS]
    assert all(len(i.members) == 500 and i.title == f"Mains power lost at 500 BTS in {i.district}" for i in power)
    assert all(len(i.members) == 100 and i.title == f"100 cameras offline in {i.district}" for i in offline)
    # one page per incident, not per alert
    assert sorted(p.reason for p in ch.pages) == ["firing"] * 12
    assert len({p.incident_id for p in ch.pages}) == 12

    # A thousand sites' batteries run flat: they join their district's power incident, quietly.
    ch = step(eng, [rules.from_status(StatusUpdate(f"BTS-{d}-{i:03d}", "bts", at(600), "offline", "battery"),
                                            info)[0] for d in DISTRICTS for i in range(0, 500, 3)], 600)
    assert not [p for p in ch.pages if p.reason == "firing"]
    assert len(eng.incidents) == 12
    assert all(i.title == f"Mains power lost at 500 BTS in {i.district}, 167 offline" for i in power)

    # Power is back everywhere: every incident resolves once, machine receivers hear it once per incident.
    eng.observe(restored(1500), at(1500))
    ch = eng.tick(at(1500 + 121))
    assert all(i.state == State.RESOLVED for i in eng.incidents.values())
    assert sorted(p.reason for p in ch.pages) == ["resolved"] * 12
    assert [e.action for e in ch.audit].count("incident_resolved") == 12


def step(eng: AlertEngine, signals: list[Signal], t: float) -> Changes:
    ch = eng.observe(signals, at(t))
    ch.merge(eng.tick(at(t + 31)))
    return ch


def test_a_storm_in_one_step_ends_as_the_same_signals_one_by_one() -> None:
    batch, single = engine(), engine()
    silence = Silence(1, {"district": "D3"}, at(-60), at(7200), "works in D3", "an")
    batch.set_silences([silence], at(0))
    single.set_silences([silence], at(0))
    signals = outage(0)
    batch.observe(signals, at(0))
    for sig in signals:
        single.observe([sig], at(0))
    for eng in (batch, single):
        eng.tick(at(31))
    assert summary(batch) == summary(single)
    silenced = [i for i in batch.incidents.values() if i.district == "D3"]
    assert len(silenced) == 2 and all(i.suppressed == "silenced:1" for i in silenced)
    assert {i.district for i in batch.incidents.values() if i.escalation.get("paged")} == set(DISTRICTS) - {"D3"}
