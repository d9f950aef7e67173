"""Domain rules, group context, silence and the batch CSV runner of the numeric detectors."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from analytics.findings import Finding
from analytics.numeric.batch import detect_path
from analytics.numeric.config import DetectorConfig
from analytics.numeric.monitor import NumericMonitor

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
STEP = 300.0
STEPS = 1100  # close to four days of 5-minute readings
K0 = 1080


def _run(m: NumericMonitor, make: dict[tuple[str, str], np.ndarray]) -> list[Finding]:
    keys = list(make)
    rows = np.array([m.register(d, k) for d, k in keys])
    vals = np.stack([make[k] for k in keys])
    out: list[Finding] = []
    for i in range(STEPS):
        out += m.ingest_arrays(rows, np.full(len(rows), T0 + STEP * i), vals[:, i])
    return out


def _traffic(seed: int, collapse: bool, slow: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hour = ((T0 + STEP * np.arange(STEPS)) % 86400) / 3600
    speed = 48.0 - 10.0 * np.exp(-((hour - 8.0) ** 2) / 2.0) + rng.normal(0, 2.0, STEPS)
    occ = 12.0 + 6.0 * np.exp(-((hour - 8.0) ** 2) / 2.0) + rng.normal(0, 1.0, STEPS)
    if collapse:
        speed[K0:] = 12.0 + rng.normal(0, 1.0, STEPS - K0)
        occ[K0:] = 40.0 + rng.normal(0, 1.0, STEPS - K0)
    elif slow:
        speed[K0:] *= 0.8
    return speed, occ


@pytest.fixture(scope="module")
def traffic_findings() -> list[Finding]:
    m = NumericMonitor()
    make = {}
    for j in range(4):
        m.set_device(f"tr-{j}", kind="traffic", group="north")
        speed, occ = _traffic(j, collapse=j == 0, slow=j in (1, 2))
        make[(f"tr-{j}", "speed_kmh")] = speed
        make[(f"tr-{j}", "occupancy_pct")] = occ
    return _run(m, make)


def test_speed_collapse_with_occupancy_up(traffic_findings: list[Finding]) -> None:
    hits = [f for f in traffic_findings if f.type == "speed_collapse"]
    assert [f.device_id for f in hits] == ["tr-0"]
    f = hits[0]
    assert 0 <= f.ts.timestamp() - (T0 + STEP * K0) <= 1800
    assert 0.5 <= f.score <= 1.0
    assert f.explanation.startswith("speed 1") and "vs usual" in f.explanation and "occupancy" in f.explanation


def test_neighbouring_sensors_slowing_together(traffic_findings: list[Finding]) -> None:
    onset = datetime.fromtimestamp(T0 + STEP * K0, UTC)
    # the first rush hours are still being learned; from then on one finding per episode
    group = [f for f in traffic_findings if f.type == "group_slowdown" and f.ts >= onset - timedelta(hours=6)]
    assert len(group) == 1
    assert group[0].device_id == "group:north"
    assert set(group[0].detail["devices"]) == {"tr-0", "tr-1", "tr-2"}


@pytest.fixture(scope="module")
def bts() -> tuple[NumericMonitor, list[Finding]]:
    m = NumericMonitor()
    make = {}
    for j in range(4):
        rng = np.random.default_rng(100 + j)
        m.set_device(f"bts-{j}", kind="bts", group="district-7")
        mains = np.ones(STEPS)
        battery = np.full(STEPS, 100.0)
        avail = np.clip(99.9 + rng.normal(0, 0.05, STEPS), 0, 100).round(2)
        if j < 3:
            mains[K0:] = 0.0
            battery[K0:] = 100.0 - 0.5 * np.arange(1, STEPS - K0 + 1)
        else:
            avail[K0:] = 90.0
        make[(f"bts-{j}", "mains_power")] = mains
        make[(f"bts-{j}", "battery_pct")] = battery
        make[(f"bts-{j}", "availability_pct")] = avail
    return m, _run(m, make)


def test_mains_power_lost_with_battery_draining(bts: tuple[NumericMonitor, list[Finding]]) -> None:
    hits = [f for f in bts[1] if f.type == "mains_power_lost"]
    assert sorted(f.device_id for f in hits) == ["bts-0", "bts-1", "bts-2"]
    assert all("draining" in f.explanation and f.score > 0.9 for f in hits)


def test_availability_drop(bts: tuple[NumericMonitor, list[Finding]]) -> None:
    hits = [f for f in bts[1] if f.type == "availability_drop"]
    assert [f.device_id for f in hits] == ["bts-3"]
    assert "availability 90%" in hits[0].explanation


def test_district_failing_together(bts: tuple[NumericMonitor, list[Finding]]) -> None:
    group = [f for f in bts[1] if f.type == "group_outage"]
    assert len(group) == 1 and group[0].device_id == "group:district-7"
    assert len(group[0].detail["devices"]) >= 3


def test_silence_once_then_cleared(bts: tuple[NumericMonitor, list[Finding]]) -> None:
    m = NumericMonitor.from_state(bts[0].to_state())
    last = T0 + STEP * (STEPS - 1)
    assert m.check_silence(last + 200) == []
    quiet = m.check_silence(last + 3600)
    silent = [f for f in quiet if f.type == "silence"]
    assert len(silent) == 12
    assert "no mains power data for 60 min" in next(f.explanation for f in silent if f.series == "mains_power")
    assert m.check_silence(last + 7200) == []
    m.ingest([("bts-0", "battery_pct", last + 7300, 50.0)])
    again = m.check_silence(last + 7300 + 3600)
    assert ("bts-0", "battery_pct") in {(f.device_id, f.series) for f in again}


def test_downtime_of_the_service_is_not_silence_of_the_devices(bts: tuple[NumericMonitor, list[Finding]]) -> None:
    m = NumericMonitor.from_state(bts[0].to_state())
    last = T0 + STEP * (STEPS - 1)
    restart = last + 4 * 3600  # state restored after four hours down
    assert m.check_silence(restart + 10, since=restart) == []
    for dev in ("bts-0", "bts-1"):  # two report again; the rest stay quiet
        m.ingest([(dev, metric, restart + 300, 50.0) for metric in ("battery_pct", "mains_power", "availability_pct")])
    quiet = m.check_silence(restart + 1850, since=restart)  # the rest: overdue 30 min after the restart
    silent = {f.device_id for f in quiet if f.type == "silence"}
    assert silent and not silent & {"bts-0", "bts-1"}
    assert min(f.detail["silent_s"] for f in quiet if f.type == "silence") > 4 * 3600


def _write(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value"])
        for i in range(n):
            ts = datetime.fromtimestamp(T0 + STEP * i, UTC).strftime("%Y-%m-%d %H:%M:%S")
            w.writerow([ts, 10.0 + rng.normal() + (30.0 if i == n - 20 else 0.0)])


def test_detect_path_directory_and_single_file(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _write(src / "a.csv", 400, 1)
    _write(src / "sub" / "b.csv", 350, 2)
    assert detect_path(src, tmp_path / "out", progress=False) == 2
    for rel, n in (("a.csv", 400), ("sub/b.csv", 350)):
        with (tmp_path / "out" / rel).open() as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == n
        assert set(rows[0]) >= {"timestamp", "value", "anomaly_score"}
        scores = np.array([float(r["anomaly_score"]) for r in rows])
        assert ((scores >= 0) & (scores <= 1)).all()
    assert detect_path(src / "a.csv", tmp_path / "one", progress=False) == 1
    with (tmp_path / "one" / "a.csv").open() as f, (tmp_path / "out" / "a.csv").open() as g:
        assert f.read() == g.read()  # alone or with other files: same scores (per-series causal)


def test_default_config_is_shared() -> None:
    assert NumericMonitor().config == DetectorConfig()


def test_a_frozen_sensor_is_called_whatever_the_hour() -> None:
    """All of a sensor's lively metrics repeating their last values at once: called in a few readings."""
    rng = np.random.default_rng(7)
    m = NumericMonitor()
    m.set_device("tr-f", kind="traffic", group="north")
    step, t0 = 30.0, 19675 * 86400.0  # readings every 30 s from a midnight (UTC)
    frozen_at = int((2 * 86400 + 7 * 3600 + 1200) / step)  # the third morning, 07:20
    found, held = [], {}
    for i in range(frozen_at + 40):
        t = t0 + step * i
        busy = 6 <= (t % 86400) / 3600 < 22
        flow = float(120 * rng.poisson(20 if busy else 0.2))
        vals = {"flow_veh_h": flow, "speed_kmh": round(48 + rng.normal(0, 2), 1) if flow else 50.0,
                "occupancy_pct": round(max(0.0, (12 if busy else 0.2) + rng.normal(0, 0.8)), 1),
                "queue_len_m": 0.0, "heavy_vehicle_pct": round(rng.uniform(5, 15), 1)}
        if i < frozen_at:
            held = vals
        found += [(i, f) for f in m.ingest([("tr-f", k, t, v) for k, v in (held if i >= frozen_at else vals).items()])]
    frozen = [(i, f) for i, f in found if f.type == "stuck" and "looks frozen" in f.explanation]
    assert len(frozen) == 1, [(i, f.explanation) for i, f in found if f.type == "stuck"]
    i, f = frozen[0]
    assert frozen_at <= i <= frozen_at + 6  # nights of repeated zeros and free-flow speeds raised nothing
    assert "heavy_vehicle_pct" in f.detail["metrics"], f.explanation
