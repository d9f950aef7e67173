"""Declared metric ranges (contract, settings, ``ioc detect``), relative-entropy windows, state versions."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest

from analytics.numeric import kernel
from analytics.numeric.bank import SeriesBank
from analytics.numeric.batch import detect_path, score_series
from analytics.numeric.config import DetectorConfig
from analytics.numeric.entropy import entropy_step
from analytics.numeric.monitor import NumericMonitor
from ingest.contract import METRIC_RANGES, METRICS
from ioc.live.config import AnalyticsConfig

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0


def _declared(mon: NumericMonitor, device: str, metric: str) -> tuple[float, float]:
    row = mon.table.keys[(device, metric)]
    return float(mon.bank.F[row, kernel.DLO]), float(mon.bank.F[row, kernel.DHI])


def test_contract_ranges_name_standard_metrics_and_are_ordered() -> None:
    standard = {m for kind in METRICS.values() for m in kind}
    assert set(METRIC_RANGES) <= standard
    assert METRIC_RANGES["speed_kmh"] == (0.0, 130.0)
    assert all(lo < hi for lo, hi in METRIC_RANGES.values())


def test_monitor_declares_contract_and_deployment_ranges() -> None:
    mon = NumericMonitor(ranges={"flow_veh_h": (0.0, 6000.0), "speed_kmh": (0.0, 90.0)})
    mon.ingest([("T1", "speed_kmh", T0, 40.0), ("T1", "flow_veh_h", T0, 300.0), ("T1", "occupancy_pct", T0, 9.0),
                ("T1", "odd_metric", T0, 1.0)])
    assert _declared(mon, "T1", "speed_kmh") == (0.0, 90.0)  # the deployment overrides the contract
    assert _declared(mon, "T1", "flow_veh_h") == (0.0, 6000.0)  # and adds its own
    assert _declared(mon, "T1", "occupancy_pct") == (0.0, 100.0)
    assert _declared(mon, "T1", "odd_metric") == (0.0, 0.0)  # undeclared: the covered range is used
    restored = NumericMonitor.from_state(mon.to_state(), ranges={"speed_kmh": (0.0, 130.0)})
    assert _declared(restored, "T1", "speed_kmh") == (0.0, 130.0)  # today's settings apply after a restart
    assert _declared(restored, "T1", "flow_veh_h") == (0.0, 0.0)


def test_settings_refuse_an_inverted_range() -> None:
    assert AnalyticsConfig(metric_ranges={"flow_veh_h": (0, 6000)}).metric_ranges["flow_veh_h"] == (0.0, 6000.0)
    with pytest.raises(ValueError, match="low must be below high"):
        AnalyticsConfig(metric_ranges={"flow_veh_h": (10, 10)})


def test_detect_declares_each_file_min_max_and_nothing_else(tmp_path: pytest.TempPathFactory) -> None:
    src = tmp_path / "in"  # type: ignore[operator]
    src.mkdir()
    rng = np.random.default_rng(3)
    x = 50 + rng.normal(0, 1, 600)
    x[500] = 90.0
    ts = T0 + 300 * np.arange(len(x))
    lines = ["timestamp,value"] + [f"{np.datetime64(int(t), 's')},{v}" for t, v in zip(ts, x, strict=True)]
    (src / "a.csv").write_text("\n".join(lines) + "\n")
    assert detect_path(src, tmp_path / "out", progress=False) == 1  # type: ignore[operator]
    direct, _ = score_series([ts], [x], [(float(x.min()), float(x.max()))])
    written = np.loadtxt(tmp_path / "out" / "a.csv", delimiter=",", skiprows=1, usecols=2)  # type: ignore[operator]
    assert np.allclose(written, direct[0], atol=1e-6)
    # causal apart from the declared range: the scores before row 500 do not depend on what follows it
    y = x.copy()
    y[501:] += 5.0
    later, _ = score_series([ts], [y], [(float(x.min()), float(x.max()))])
    assert np.array_equal(later[0, :501], direct[0, :501])


def test_entropy_windows_flag_a_new_distribution_once() -> None:
    w, nb, slots = 20, 5, 4
    E = np.zeros((1, w), np.uint8)
    C = np.zeros((1, nb), np.float32)
    P = np.zeros((1, slots, nb), np.float32)
    K = np.zeros((1, slots), np.float32)
    rng = np.random.default_rng(0)
    x = np.r_[rng.uniform(0.0, 0.4, 300), rng.uniform(0.6, 1.0, 300)]
    out = np.array([entropy_step(E, C, P, K, np.array([0]), np.array([float(i)]), np.array([v]), np.zeros(1),
                                 np.ones(1))[0] for i, v in enumerate(x)])
    assert out[:300].sum() <= 2  # the first windows settle into a hypothesis
    assert out[300:320].sum() >= 1  # the shift to another distribution is novel
    assert out[400:].sum() == 0  # ... then it is a known hypothesis
    assert (K[0] > 0).sum() <= slots


def test_bank_restores_a_version_2_state_without_ranges() -> None:
    bank = SeriesBank(capacity=2)
    rows = bank.add(2)
    for i in range(50):
        bank.update(rows, np.full(2, T0 + 300 * i), np.array([1.0, 2.0]) + i % 3)
    buf = io.BytesIO()
    meta = json.dumps({"version": 2, "config": DetectorConfig().as_dict()})
    old: dict[str, np.ndarray] = {"F": bank.F[:2, :35], "D": bank.D[:2], "W": bank.W[:2], "R": bank.R[:2],
                                  "Hb": bank.Hb[:2], "Q": bank.Q[:2], "S": bank.S[:2]}
    np.savez_compressed(buf, meta=np.array(meta), **old)  # type: ignore[arg-type]
    back = SeriesBank.from_state(buf.getvalue())
    assert np.array_equal(back.F[:2, :35], bank.F[:2, :35])
    assert not back.F[:2, kernel.DLO:kernel.DHI + 1].any()


def test_entropy_state_round_trips() -> None:
    cfg = dataclasses.replace(DetectorConfig(), re_w=0.6)
    a = SeriesBank(cfg, capacity=1)
    rows = a.add(1)
    a.declare(rows, 0.0, 100.0)
    rng = np.random.default_rng(1)
    for i in range(200):
        a.update(rows, np.array([T0 + 300 * i]), rng.uniform(20, 40, 1))
    b = SeriesBank.from_state(a.to_state(), cfg)
    for name in ("F", "Ew", "Ec", "Ep", "Ek"):
        assert np.array_equal(getattr(a, name)[:1], getattr(b, name)[:1])
