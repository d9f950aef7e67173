"""Generic numeric detectors on synthetic series: each anomaly type found, quiet cases quiet."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.numeric.bank import SeriesBank
from analytics.numeric.kernel import TYPES
from analytics.numeric.monitor import NumericMonitor

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0  # a Tuesday, 22:13 UTC
STEP = 300.0
N = 3000
K0 = 2000  # anomalies start here (about a week in)


def _base(seed: int, n: int = N, noise: float = 1.0, t: np.ndarray | None = None,
          daily: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = T0 + STEP * np.arange(n) if t is None else t
    cycle = daily * np.sin(2 * np.pi * (t % 86400) / 86400)
    return t, 50.0 + cycle + rng.normal(0.0, noise, len(t))


def _scenarios() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    t, x = _base(1)
    x[K0] += 15.0
    out["spike"] = (t, x)
    t, x = _base(2)
    x[K0] -= 15.0
    out["dip"] = (t, x)
    t, x = _base(3)
    x[K0:] += 3.0
    out["level_shift"] = (t, x)
    t, x = _base(4, daily=0.0)
    x[K0:] += np.random.default_rng(40).normal(0.0, 3.0, N - K0)
    out["variance_change"] = (t, x)
    t, x = _base(5)
    x[K0:] = x[K0]
    out["stuck"] = (t, x)
    t, x = _base(6, daily=0.0)
    x[K0:] = 50.0 + np.random.default_rng(60).normal(0.0, 0.01, N - K0)
    out["flatline"] = (t, x)
    t, x = _base(7)
    x[1000:] += 0.007 * np.arange(N - 1000)
    out["drift"] = (t, x)
    # quiet cases
    t, x = _base(8)
    x += 0.5 * np.arange(N) / N
    out["quiet_slow_drift"] = (t, x)
    t, x = _base(9)
    hour = (t % 86400) / 3600
    x += 40.0 * np.exp(-((hour - 8.0) ** 2) / 0.5) + 30.0 * np.exp(-((hour - 17.5) ** 2) / 0.5)
    out["quiet_daily_peaks"] = (t, x)
    rng = np.random.default_rng(10)
    x = np.round(100.0 + rng.normal(0.0, 0.02, N), 1)
    out["quiet_nearly_constant"] = (T0 + STEP * np.arange(N), x)
    t = T0 + STEP * np.arange(N)
    t[1200:] += 6 * 3600.0  # a 6-hour hole
    t[2200:] += 2 * 86400.0  # and a 2-day one
    out["quiet_gaps"] = _base(11, t=t)
    return out


@pytest.fixture(scope="module")
def findings() -> dict[str, list[tuple[int, str]]]:
    """Run every scenario in one bank, a reading per series per batch (as ``detect_path`` does)."""
    sc = _scenarios()
    names = list(sc)
    bank = SeriesBank()
    rows = bank.add(len(names))
    ts = np.stack([sc[k][0] for k in names])
    xs = np.stack([sc[k][1] for k in names])
    out: dict[str, list[tuple[int, str]]] = {k: [] for k in names}
    for i in range(N):
        res = bank.update(rows, ts[:, i], xs[:, i])
        for j in np.flatnonzero(res.fired):
            out[names[j]].append((i, TYPES[int(res.kind[j])]))
    return out


@pytest.mark.parametrize("kind", ["spike", "dip", "level_shift", "variance_change", "stuck", "flatline"])
def test_anomaly_found_with_its_type(findings: dict[str, list[tuple[int, str]]], kind: str) -> None:
    hits = [(i, k) for i, k in findings[kind] if i >= K0]
    assert hits, f"{kind}: nothing fired"
    first = hits[0]
    assert first[1] == kind, f"{kind}: first finding {first}"
    assert first[0] - K0 < 100, f"{kind}: found late at {first[0]}"
    assert not [f for f in findings[kind] if 200 < f[0] < K0], f"{kind}: false alarms {findings[kind]}"


def test_drift_found(findings: dict[str, list[tuple[int, str]]]) -> None:
    kinds = [k for i, k in findings["drift"] if i > 1000]
    assert "drift" in kinds, findings["drift"]


@pytest.mark.parametrize("name", ["quiet_slow_drift", "quiet_daily_peaks", "quiet_nearly_constant", "quiet_gaps"])
def test_quiet_series_do_not_fire(findings: dict[str, list[tuple[int, str]]], name: str) -> None:
    assert findings[name] == []


def test_state_round_trip_gives_identical_scores() -> None:
    t, x = _base(12, n=500)
    x[450] += 20.0
    a = SeriesBank()
    a.add(2)
    rows = np.array([0, 1])
    for i in range(350):
        a.update(rows, np.array([t[i], t[i]]), np.array([x[i], -x[i]]))
    b = SeriesBank.from_state(a.to_state())
    assert b.size == 2
    for i in range(350, 500):
        ra = a.update(rows, np.array([t[i], t[i]]), np.array([x[i], -x[i]]))
        rb = b.update(rows, np.array([t[i], t[i]]), np.array([x[i], -x[i]]))
        np.testing.assert_array_equal(ra.score, rb.score)
        np.testing.assert_array_equal(ra.kind, rb.kind)
    np.testing.assert_array_equal(a.F[:2], b.F[:2])
    np.testing.assert_array_equal(a.W[:2], b.W[:2])


def test_monitor_state_round_trip_keeps_registry_and_seasonality() -> None:
    t, x = _base(13, n=450)
    x[420] += 25.0
    m = NumericMonitor()
    m.set_device("cam-1", kind="traffic", group="north")
    for i in range(350):
        m.ingest([("cam-1", "flow_veh_h", t[i], x[i])])
    r = NumericMonitor.from_state(m.to_state())
    assert r.table.keys == m.table.keys
    assert r.table.device_group == m.table.device_group
    np.testing.assert_array_equal(r.bank.D[:1], m.bank.D[:1])
    found, again = [], []
    for i in range(350, 450):
        found += m.ingest([("cam-1", "flow_veh_h", t[i], x[i])])
        again += r.ingest([("cam-1", "flow_veh_h", t[i], x[i])])
    assert found == again
    assert [f.type for f in found] == ["spike"]


def test_batch_with_repeats_is_causal_and_matches_one_by_one() -> None:
    t, x = _base(14, n=400)
    one = SeriesBank()
    one.add(1)
    s1 = np.concatenate([one.update(np.array([0]), t[i : i + 1], x[i : i + 1]).score for i in range(400)])
    many = SeriesBank()
    many.add(1)
    s2 = np.concatenate([many.update(np.zeros(4, dtype=np.intp), t[i : i + 4], x[i : i + 4]).score
                         for i in range(0, 400, 4)])
    np.testing.assert_array_equal(s1, s2)


def test_nan_readings_are_ignored() -> None:
    bank = SeriesBank()
    bank.add(1)
    res = bank.update(np.array([0, 0]), np.array([T0, T0 + 300]), np.array([np.nan, 1.0]))
    assert res.score[0] == 0.0
    assert bank.F[0, 0] == 1.0  # one reading learned


def test_context_novelty_option_scores_new_patterns_and_round_trips() -> None:
    from analytics.numeric.config import DetectorConfig

    cfg = DetectorConfig(novelty_w=0.25)
    t, x = _base(15, n=700, daily=0.0)
    x = 50.0 + 10.0 * np.sign(np.sin(np.arange(700) / 3.0))  # a regular square wave...
    x[650:660] = 80.0  # ...then a never-seen level
    a = SeriesBank(cfg)
    a.add(1)
    for i in range(400):
        a.update(np.array([0]), t[i : i + 1], x[i : i + 1])
    b = SeriesBank.from_state(a.to_state(), cfg)
    sa = np.concatenate([a.update(np.array([0]), t[i : i + 1], x[i : i + 1]).score for i in range(400, 700)])
    sb = np.concatenate([b.update(np.array([0]), t[i : i + 1], x[i : i + 1]).score for i in range(400, 700)])
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(a.Q[:1], b.Q[:1])
    assert sa[250:260].max() > sa[:240].max()
