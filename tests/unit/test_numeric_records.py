"""Range records of the numeric detectors (record highs and lows), on small synthetic series."""

from __future__ import annotations

import numpy as np
import pytest

from analytics.numeric.bank import SeriesBank
from analytics.numeric.config import DetectorConfig
from analytics.numeric.kernel import QHI, TYPES
from analytics.numeric.monitor import NumericMonitor
from tests.unit.numeric_support import Road, SharedRuns

pytestmark = pytest.mark.unit

T0 = 1_700_000_000.0
STEP = 300.0
N = 1500


def _daily(seed: int, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = T0 + STEP * np.arange(n)
    return t, 50.0 + 10.0 * np.sin(2 * np.pi * (t % 86400) / 86400) + rng.normal(0.0, 1.0, n)


def _high() -> Road:
    t, x = _daily(1)
    x[1000] += 18.0  # a spike: the first finding, which starts a hold of many readings
    x[1100] += 60.0  # far beyond anything seen: raised although the hold is still on
    return Road(t, x)


def _low() -> Road:
    t, x = _daily(2)
    x[1200] -= 60.0
    return Road(t, x)


DEFAULT = DetectorConfig()
RUNS = SharedRuns({"high": _high, "low": _low}, {DEFAULT: ("high", "low")})  # both side by side, run once


def _shared(road: str) -> list[tuple[int, str, bool]]:
    res = RUNS.run(DEFAULT, road)
    return [(i, TYPES[int(res.kind[i])], bool(res.record[i])) for i in res.fired_at()]


def test_a_record_high_raises_even_while_an_earlier_alert_holds() -> None:
    fired = _shared("high")
    assert [(i, k) for i, k, _ in fired if i >= 900] == [(1000, "spike"), (1100, "spike")]
    assert [rec for i, _, rec in fired if i == 1100] == [True]


def test_a_record_low_is_a_dip() -> None:
    assert [(i, k, rec) for i, k, rec in _shared("low") if i >= 900] == [(1200, "dip", True)]


def test_the_covered_range_fades_so_records_return() -> None:
    cfg = DetectorConfig()
    t, x = _daily(4, n=800)
    bank = SeriesBank(cfg)
    bank.add(1)
    for i in range(len(x)):
        bank.update(np.array([0]), t[i : i + 1], x[i : i + 1])
    hi = float(bank.F[0, QHI])
    later = t[-1] + cfg.range_tau_s  # a long quiet spell, then one more reading at the usual level
    bank.update(np.array([0]), np.array([later]), np.array([50.0]))
    assert float(bank.F[0, QHI]) - 50.0 < 0.5 * (hi - 50.0)


def test_record_findings_explain_themselves() -> None:
    t, x = _daily(5)
    x[1300] += 70.0
    m = NumericMonitor()
    found = []
    for i in range(N):
        found += m.ingest([("bts-7", "temperature_c", t[i], x[i])])
    rec = [f for f in found if "than anything in" in f.explanation]
    assert rec and rec[0].type == "spike" and rec[0].score == 1.0, [f.explanation for f in found]
