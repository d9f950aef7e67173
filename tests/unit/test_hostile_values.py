"""Readings of absurd magnitude reach the numeric detectors without breaking them or their neighbours."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analytics.numeric.monitor import MAX_MAGNITUDE, NumericMonitor

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("extreme", [1e308, math.inf, math.nan, 3.4e38, MAX_MAGNITUDE * 10])
def test_extreme_values_leave_the_detectors_and_other_series_sound(extreme: float) -> None:
    mon = NumericMonitor()
    t0 = 1.8e9
    with np.errstate(all="raise"):  # no overflow or invalid operation anywhere in the kernels
        for i in range(300):
            mon.ingest([("bad", "flow_veh_h", t0 + 60 * i, (-1) ** i * extreme),
                        ("good", "flow_veh_h", t0 + 60 * i, 400.0 + 10 * math.sin(i / 5))])
    for name in ("F", "D", "W"):
        state = getattr(mon.bank, name)
        assert np.isfinite(state[: mon.bank.size]).all(), name
