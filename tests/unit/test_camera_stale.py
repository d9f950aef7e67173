"""StaleMonitor / check_stale and the batch folder checker."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from analytics.camera import StaleMonitor, check_stale
from analytics.camera.batch import check_dir

pytestmark = pytest.mark.unit

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def test_silent_camera_is_reported_once_and_clears() -> None:
    mon = StaleMonitor(min_gap_s=30)
    for i in range(10):
        mon.snapshot("cam-1", T0 + timedelta(seconds=5 * i))
        mon.snapshot("cam-2", T0 + timedelta(seconds=5 * i))
    mon.snapshot("cam-2", T0 + timedelta(seconds=80))
    assert mon.check(T0 + timedelta(seconds=60)) == []
    found = mon.check(T0 + timedelta(seconds=90))
    assert [f.device_id for f in found] == ["cam-1"] and found[0].type == "stale"
    assert mon.check(T0 + timedelta(seconds=95)) == []  # reported once
    mon.snapshot("cam-1", T0 + timedelta(seconds=96))
    assert mon.check(T0 + timedelta(seconds=97)) == []


def test_fps_and_bitrate_collapse() -> None:
    mon = StaleMonitor()
    for _ in range(20):
        mon.telemetry("cam-1", fps=25.0, kbps=2000.0)
    mon.snapshot("cam-1", T0)
    assert mon.check(T0) == []
    mon.telemetry("cam-1", fps=3.0, kbps=150.0)
    found = mon.check(T0 + timedelta(seconds=1))
    assert sorted(f.detail["metric"] for f in found) == ["bitrate", "fps"]


def test_check_stale_stateless() -> None:
    found = check_stale({"a": T0, "b": T0 + timedelta(seconds=100)}, T0 + timedelta(seconds=120), 60)
    assert [f.device_id for f in found] == ["a"]


def test_check_dir_writes_one_row_per_snapshot_in_numeric_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (120, 160, 3), np.uint8)
    for seq in ("camA", "camB"):
        (tmp_path / seq).mkdir()
        for i in (0, 1, 2, 10):  # "10" must sort after "2"
            cv2.imwrite(str(tmp_path / seq / f"{i}.jpg"), np.roll(base, 3 * i, axis=1))
    out = tmp_path / "det.csv"
    assert check_dir(tmp_path, out, progress=False) == 8
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["sequence", "index", "label", "activity"]
    assert [r[1] for r in rows[1:5]] == ["0", "1", "2", "10"]


def test_an_outage_does_not_stretch_the_usual_period() -> None:
    mon = StaleMonitor(min_gap_s=10, gap_factor=4)
    t = T0
    for _ in range(10):
        t += timedelta(seconds=5)
        mon.snapshot("cam-1", t)
    t += timedelta(seconds=300)  # an outage, then back to every 5 s
    mon.snapshot("cam-1", t)
    for _ in range(3):
        t += timedelta(seconds=5)
        mon.snapshot("cam-1", t)
    assert mon.check(t + timedelta(seconds=15)) == []
    assert [f.type for f in mon.check(t + timedelta(seconds=25))] == ["stale"]  # 4 x 5 s, not 4 x 300 s


def test_slow_camera_is_judged_by_its_own_period() -> None:
    mon = StaleMonitor(min_gap_s=30, gap_factor=6)
    for i in range(6):
        mon.snapshot("cam-slow", T0 + timedelta(seconds=60 * i))
    last = T0 + timedelta(seconds=300)
    assert mon.check(last + timedelta(seconds=200)) == []  # within 6 periods of a minute
    assert len(mon.check(last + timedelta(seconds=400))) == 1


def test_telemetry_collapse_clears_when_it_recovers() -> None:
    mon = StaleMonitor()
    for _ in range(10):
        mon.telemetry("cam-1", fps=25.0)
    mon.telemetry("cam-1", fps=2.0)
    assert len(mon.check(T0)) == 1
    assert mon.check(T0) == []  # once
    mon.telemetry("cam-1", fps=25.0)
    assert mon.check(T0) == []
    mon.telemetry("cam-1", fps=2.0)
    assert len(mon.check(T0)) == 1  # a new collapse is a new finding


def test_arrivals_survive_a_restart_and_downtime_is_not_silence() -> None:
    before = StaleMonitor(min_gap_s=30)
    for i in range(10):
        before.snapshot("cam-1", T0 + timedelta(seconds=5 * i))
        before.snapshot("cam-2", T0 + timedelta(seconds=5 * i))
    saved = before.to_state()

    after = StaleMonitor(min_gap_s=30)
    assert after.restore(saved) == 2
    restart = T0 + timedelta(hours=2)  # the service was down for two hours
    assert after.check(restart + timedelta(seconds=10), since=restart) == []  # its own downtime: no alarm
    after.snapshot("cam-2", restart + timedelta(seconds=12))  # cam-2 is back, cam-1 stays dark
    found = after.check(restart + timedelta(seconds=40), since=restart)
    assert [f.device_id for f in found] == ["cam-1"]
    assert found[0].detail["gap_s"] > 7000  # the whole gap is reported, not just the part since the restart


def test_a_camera_heard_since_the_restart_keeps_what_it_learned_live() -> None:
    before = StaleMonitor()
    for i in range(5):
        before.snapshot("cam-1", T0 + timedelta(seconds=5 * i))
    live = StaleMonitor()
    live.snapshot("cam-1", T0 + timedelta(hours=1))
    assert live.restore(before.to_state()) == 0
    with pytest.raises(ValueError):
        live.restore(b"not a state")
    with pytest.raises(ValueError):
        live.restore(b'{"version": 1, "cameras": {"cam-9": {"last": 5}}}')
