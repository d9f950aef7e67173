"""Two-tier saving of the numeric state: which devices are urgent, and which are due at a pass."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.numeric import kernel
from analytics.numeric.monitor import NumericMonitor
from analytics.numeric.save_tiers import Marks, SavePlan, phase, take, untake

pytestmark = pytest.mark.unit

T0 = 1_767_225_600.0


def test_urgent_devices_are_due_at_every_pass_and_quiet_ones_once_per_full_interval() -> None:
    names = [f"dev-{i}" for i in range(1000)]
    plan = SavePlan(300.0)
    everyone = set(range(len(names)))
    assert plan.due(names, everyone, {7}, 0.0) == {7}  # the first pass owes no slot yet
    taken: dict[int, list[float]] = {}
    per_pass = []
    for k in range(1, 41):  # 10 minutes of passes every 15 s, every device always dirty
        now = 15.0 * k
        due = plan.due(names, everyone, {7}, now)
        assert 7 in due
        per_pass.append(len(due - {7}))
        for d in due - {7}:
            taken.setdefault(d, []).append(now)
    quiet = [t for d, t in taken.items() if d != 7]
    assert len(quiet) == len(names) - 1  # every quiet device saved...
    assert all(len(t) == 2 and t[1] - t[0] == 300.0 for t in quiet)  # ...twice in 10 minutes, 300 s apart
    assert max(per_pass) <= 2.5 * np.mean(per_pass)  # spread over the interval, not one burst
    d = names.index("dev-3")
    assert taken[d][0] == pytest.approx(15.0 * np.ceil(plan.next_slot("dev-3", 0.0) / 15.0))


def test_a_device_is_due_only_if_dirty_and_a_short_full_interval_is_the_single_tier() -> None:
    names = ["a", "b"]
    plan = SavePlan(300.0)
    plan.due(names, set(), set(), 0.0)
    assert plan.due(names, set(), set(), 300.0) == set()  # nothing changed: nothing written at the slot
    single = SavePlan(15.0)
    single.due(names, {0, 1}, set(), 0.0)
    assert single.due(names, {0, 1}, set(), 15.0) == {0, 1}
    assert 0.0 <= phase("a", 300.0) < 300.0 and phase("a", 300.0) == phase("a", 300.0)


def test_a_cusum_is_urgent_once_per_step_of_an_elevation_however_it_hovers() -> None:
    marks = Marks()
    row = np.array([5])

    def rise(step: float, level: float) -> bool:
        return bool(marks.rise(row, np.array([step]), np.array([level]))[0])

    assert rise(3.0, 0.8)  # three quarters of the alarm level
    assert not rise(0.0, 0.7) and not rise(3.0, 0.8)  # hovering about it: once
    assert rise(4.0, 1.0) and not rise(3.0, 0.9) and not rise(4.0, 1.0)  # the level (held back by records)
    assert not rise(0.0, 0.3)  # calm again
    assert rise(3.0, 0.8)  # a new elevation


def learned(days: float = 3.0) -> tuple[NumericMonitor, float]:
    """One BTS with two series learned every 5 minutes (noise around a level); its marks cleared."""
    mon = NumericMonitor()
    mon.set_device("bts-1", "bts", "d1")
    rng = np.random.default_rng(3)
    t = T0
    for i in range(int(days * 288)):
        t = T0 + 300.0 * i
        mon.ingest([("bts-1", "temperature_c", t, 40.0 + rng.normal(0, 0.5)),
                    ("bts-1", "cpu_pct", t, 30.0 + rng.normal(0, 1.0))])
    mon.dirty.clear()
    mon.urgent.clear()
    return mon, t


def test_quiet_learning_is_not_urgent_but_a_finding_and_its_hold_are() -> None:
    mon, t = learned()
    mon.ingest([("bts-1", "temperature_c", t + 300, 40.1), ("bts-1", "cpu_pct", t + 300, 30.2)])
    assert mon.dirty == {0} and mon.urgent == set()
    found = mon.ingest([("bts-1", "temperature_c", t + 600, 90.0), ("bts-1", "cpu_pct", t + 600, 30.1)])
    assert found and mon.urgent == {0}
    row = mon.table.keys[("bts-1", "temperature_c")]
    assert mon.bank.F[row, kernel.N] < mon.bank.F[row, kernel.HOLD]  # the hold a new leader must keep
    mon.urgent.clear()
    # the hold ends after `hold` readings: that too is urgent, the readings in between are not
    end = int(mon.bank.F[row, kernel.HOLD] - mon.bank.F[row, kernel.N])
    marks = []
    for i in range(end):
        mon.ingest([("bts-1", "temperature_c", t + 900 + 300 * i, 40.0 + 0.1 * (i % 3))])
        marks.append(bool(mon.urgent))
        mon.urgent.clear()
    assert marks[-1] and sum(marks) <= 3


def test_new_series_new_group_silence_and_declared_ranges_are_urgent() -> None:
    mon, t = learned(1.0)
    mon.ingest([("bts-1", "rssi_dbm", t + 300, -70.0)])  # a new series
    assert mon.urgent == {0}
    mon.urgent.clear()
    mon.set_device("bts-1", "bts", "d1")  # the same kind and group: nothing new
    assert mon.urgent == set()
    mon.set_device("bts-1", "bts", "d2")
    assert mon.urgent == {0}
    mon.urgent.clear()
    assert mon.check_silence(t + 86400.0)
    assert mon.urgent == {0}
    mon.urgent.clear()
    mon.declare_ranges({"cpu_pct": (0.0, 200.0)})
    assert mon.urgent == {0} and 0 in mon.dirty
    mon.urgent.clear()
    mon.declare_ranges({"cpu_pct": (0.0, 200.0)})  # unchanged
    assert mon.urgent == set()


def test_take_removes_the_due_devices_from_both_tiers_and_untake_gives_them_back() -> None:
    mon = NumericMonitor()
    for d in ("a", "b", "c"):
        mon.set_device(d, "bts", "d1")
    mon.dirty, mon.urgent = {0, 1, 2}, {1}
    plan = SavePlan(300.0)
    names, taken = take(mon, plan, 0.0)  # a pass: the urgent device only (the first pass owes no slot)
    assert names == ["a", "b", "c"] and taken == {1}
    assert mon.dirty == {0, 2} and mon.urgent == set()
    untake(mon, taken)  # not saved after all: urgent again
    assert mon.dirty == {0, 1, 2} and mon.urgent == {1}
    assert take(mon)[1] == {0, 1, 2} and not mon.dirty and not mon.urgent  # a shutdown save: everything
    assert plan.last == 0.0  # ...without advancing the plan
