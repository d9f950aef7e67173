"""The rules' episode memory (group episodes, frozen sensors) saved and restored with the learned state.

A restart (or a partition hand-over) restores the devices (analytics/numeric/device_state.py) and the group
episodes (analytics/numeric/episodes.py): an episode already reported is not reported again, and the next
one after it cleared is.
"""

from __future__ import annotations

import numpy as np
import pytest

from analytics.numeric import episodes
from analytics.numeric.device_state import encode_devices, restore_devices
from analytics.numeric.monitor import NumericMonitor

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
STEP = 300.0
BTS = [f"bts-{j}" for j in range(4)]


def mains(m: NumericMonitor, steps: range, off: int) -> list[str]:
    """Mains readings of the district's four BTS, the first ``off`` of them without mains; finding types."""
    out = []
    for i in steps:
        out += [f.type for f in m.ingest([(d, "mains_power", T0 + STEP * i, 0.0 if j < off else 1.0)
                                           for j, d in enumerate(BTS)])]
    return out


def district() -> NumericMonitor:
    m = NumericMonitor()
    for d in BTS:
        m.set_device(d, "bts", "district-7")
    return m


def restart(m: NumericMonitor, memory: bool = True) -> NumericMonitor:
    """A new process: every device's saved state (and the episode row) restored into a fresh monitor."""
    fresh = NumericMonitor()
    restore_devices(fresh, encode_devices(m, list(m.table.device_idx)))
    if memory:
        p = episodes.pending(m)
        assert episodes.restore(fresh, episodes.encode(m) if p is None else p.data) == len(m.rules.group_active)
    return fresh


def test_an_ongoing_district_outage_is_not_raised_again_after_a_restart() -> None:
    m = district()
    assert mains(m, range(0, 5), off=0) == []
    first = mains(m, range(5, 8), off=3)
    assert first.count("group_outage") == 1 and first.count("mains_power_lost") == 3

    # without the memory (as before): the next reading of the same outage is a new group finding
    assert mains(restart(m, memory=False), range(8, 9), off=3) == ["group_outage"]

    m = restart(m)
    assert mains(m, range(8, 12), off=3) == [], "the same outage, same episodes: nothing new"
    assert mains(m, range(12, 30), off=0) == []  # back for well over four rule windows: the episode ends
    assert not m.rules.group_active
    m = restart(m)  # the end is saved too
    again = mains(m, range(30, 32), off=3)
    assert again.count("group_outage") == 1 and again.count("mains_power_lost") == 3


def test_the_memory_is_pending_only_when_an_episode_started_or_ended() -> None:
    m = district()
    mains(m, range(0, 5), off=0)
    assert episodes.pending(m) is None
    mains(m, range(5, 8), off=3)
    p = episodes.pending(m)
    assert p is not None and b"district-7" in p.data
    mains(m, range(8, 10), off=3)  # the same episode: the same bytes still to write
    q = episodes.pending(m)
    assert q is not None and q.data == p.data
    episodes.done(p)
    assert episodes.pending(m) is None
    mains(m, range(10, 30), off=0)
    ended = episodes.pending(m)
    assert ended is not None and b"district-7" not in ended.data


def test_memory_this_version_cannot_read_is_skipped() -> None:
    m = district()
    for junk in (b"", b"\x00garbage", b'{"v": 99, "groups": []}', b'{"v": 1, "groups": [[1]]}', b"[]"):
        assert episodes.restore(m, junk) == 0
    assert episodes.restore(m, b'{"v": 1, "groups": [["district-7", "bts"], ["x", "not-a-kind"]]}') == 1
    assert episodes.pending(m) is None, "what was just restored is what is saved"


def lively(m: NumericMonitor, steps: range, frozen: bool, rng: np.random.Generator) -> list[str]:
    out = []
    for i in steps:
        v = (30.0, 20.0, 900.0) if frozen else (40 + rng.normal(0, 3), 15 + rng.normal(0, 2), 800 + rng.normal(0, 50))
        batch = [("tr-1", k, T0 + 60 * i, x) for k, x in zip(("speed_kmh", "occupancy_pct", "flow_veh_h"), v,
                                                                 strict=True)]
        out += [f.type for f in m.ingest(batch) if f.device_id == "tr-1"]
    return out


def test_a_frozen_sensor_is_not_reported_again_after_a_restart() -> None:
    rng = np.random.default_rng(3)
    m = NumericMonitor()
    m.set_device("tr-1", "traffic", "north")
    lively(m, range(0, 200), frozen=False, rng=rng)
    assert lively(m, range(200, 210), frozen=True, rng=rng).count("stuck") == 1
    d = m.table.device_idx["tr-1"]
    assert m.rules.frozen_active == {d}

    m = restart(m)
    assert lively(m, range(210, 220), frozen=True, rng=rng) == [], "the same freeze"
    m.urgent.clear()
    lively(m, range(220, 230), frozen=False, rng=rng)
    assert not m.rules.frozen_active and d in m.urgent, "its end is saved at the next pass"
    m = restart(m)
    assert lively(m, range(230, 240), frozen=True, rng=rng).count("stuck") == 1, "a new freeze"
