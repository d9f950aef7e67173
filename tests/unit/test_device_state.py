"""Learned numeric state saved per device and restored into a fresh monitor (analytics/numeric/device_state.py)."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.numeric.bank import ARRAYS
from analytics.numeric.device_state import encode_devices, restore_devices
from analytics.numeric.monitor import NumericMonitor
from analytics.numeric.table import FLOAT_COLS

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0


def feed(mon: NumericMonitor, devices: list[str], start: int, count: int) -> list[tuple[str, str]]:
    """Readings of a traffic and a BTS metric per device, every minute; the findings as (device, type)."""
    rng = np.random.default_rng(start)
    found = []
    for i in range(start, start + count):
        batch = []
        for j, dev in enumerate(devices):
            batch.append((dev, "speed_kmh", T0 + 60 * i, 40 + 5 * np.sin(i / 30) + rng.normal() + j))
            batch.append((dev, "battery_pct", T0 + 60 * i, 90 + rng.normal()))
        if i == start + count - 5:
            batch.append((devices[0], "speed_kmh", T0 + 60 * i + 1, 400.0))
        found += [(f.device_id, f.type) for f in mon.ingest(batch)]
    return found


def test_devices_saved_one_by_one_restore_the_same_detector() -> None:
    devices = [f"dev-{i}" for i in range(6)]
    live = NumericMonitor()
    for i, dev in enumerate(devices):
        live.set_device(dev, "traffic", f"district-{i % 2}")
    feed(live, devices, 0, 200)
    assert live.dirty == set(range(6))
    saved = encode_devices(live, [*devices[::-1], "unknown"])  # any order; an unknown device is skipped
    assert sorted(d for d, _ in saved) == devices
    live.dirty.clear()

    fresh = NumericMonitor()
    fresh.set_device("already-live", "bts")  # a device learning live is newer than anything saved: kept
    assert restore_devices(fresh, [*saved, ("already-live", saved[0][1])]) == 6
    for (dev, metric), row in live.table.keys.items():
        other = fresh.table.keys[(dev, metric)]
        for name in ARRAYS:
            assert np.array_equal(getattr(live.bank, name)[row], getattr(fresh.bank, name)[other], equal_nan=True), name
        for k in FLOAT_COLS:
            assert np.array_equal(live.table.f[k][row], fresh.table.f[k][other], equal_nan=True), k
        assert live.table.kind_of(row) == fresh.table.kind_of(other)
        assert live.table.group_name(int(live.table.grp[row])) == fresh.table.group_name(int(fresh.table.grp[other]))
    # both go on to detect the same things
    assert feed(live, devices, 200, 60) == feed(fresh, devices, 200, 60)
    assert live.dirty == set(range(6))  # every device learned again


def test_state_of_another_configuration_or_garbage_is_skipped() -> None:
    from analytics.numeric.config import DetectorConfig

    live = NumericMonitor()
    feed(live, ["a", "b"], 0, 20)
    saved = encode_devices(live, ["a", "b"])
    other = NumericMonitor(DetectorConfig(day_bins=48))
    assert restore_devices(other, saved) == 0
    assert restore_devices(NumericMonitor(), [("a", b"\x01garbage"), ("b", b"")]) == 0
    assert len(other.table) == 0


def test_state_saved_before_columns_and_arrays_were_added_restores_what_it_learned() -> None:
    """An upgrade that adds scalar columns or arrays (here: the time-of-day envelopes, issue #17 eighth round)
    keeps each device's learning: older states restore with the new columns at 0 and the new arrays empty."""
    import json

    from analytics.numeric import kernel
    from analytics.numeric.device_state import gather, pack

    live = NumericMonitor()
    live.set_device("a", "traffic")
    feed(live, ["a"], 0, 200)
    g = gather(live, ["a"])
    old_cols = kernel.TOD_SCALE  # the columns before it
    g.arrays["F"] = np.ascontiguousarray(g.arrays["F"][:, :old_cols])
    del g.arrays["En"]
    head = json.loads(g.heads[0])
    head["shapes"]["F"][1] = old_cols
    del head["shapes"]["En"]
    g.heads[0] = json.dumps(head, separators=(",", ":")).encode()
    fresh = NumericMonitor()
    assert restore_devices(fresh, pack(g)) == 1
    for (dev, metric), row in live.table.keys.items():
        other = fresh.table.keys[(dev, metric)]
        assert np.array_equal(live.bank.F[row, :old_cols], fresh.bank.F[other, :old_cols])
        assert np.array_equal(live.bank.Ac[row], fresh.bank.Ac[other])
        assert fresh.bank.F[other, kernel.TOD_SCALE] == 0.0
    # and it goes on learning: the envelopes start at the next reading
    feed(fresh, ["a"], 200, 5)
    assert (fresh.bank.F[: len(fresh.table), kernel.TOD_SCALE] > 0).all()
    # an older state with an array this configuration lacks is still another configuration
    head["shapes"]["Zz"] = ["<f4", 3]
    g.heads[0] = json.dumps(head, separators=(",", ":")).encode()
    assert restore_devices(NumericMonitor(), pack(g)) == 0
