"""Readings of absurd magnitude reach the numeric detectors without breaking them or their neighbours."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from analytics.numeric.monitor import MAX_MAGNITUDE, NumericMonitor
from ingest.parse import parse_message
from ingest.records import Reason

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


@pytest.mark.parametrize("value", [b"1e308", b"-1.7976931348623157e308", b"1e101", b"1" + b"0" * 120])
def test_values_whose_sums_overflow_are_quarantined_at_ingest(value: bytes) -> None:
    """A value near float8's limit made every rollup refresh of its bucket overflow in PostgreSQL."""
    parsed = parse_message("ioc/v1/traffic/T1/telemetry",
                           b'{"ts": 1796000000000, "metrics": {"flow_veh_h": %s, "speed_kmh": 40}}' % value,
                           datetime(2026, 12, 1, tzinfo=UTC))
    assert not parsed.records
    assert [r.reason for r in parsed.rejections] == [Reason.NON_FINITE]
    assert "beyond" in parsed.rejections[0].detail or "out of range" in parsed.rejections[0].detail
