"""One device whose readings make a detector raise costs only its own readings, never the analytics stage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from ioc.analytics_stage import AnalyticsStage
from ioc.live.hub import LiveHub

pytestmark = pytest.mark.unit


async def test_a_detector_that_raises_on_one_device_spares_the_others() -> None:
    stage = AnalyticsStage(LiveHub(), None, camera_processes=0)
    seen: list[str] = []
    real = stage.monitor.ingest

    def picky(readings: list[tuple[str, str, datetime, float]]) -> Any:
        if any(r[0] == "poison" for r in readings):
            raise ValueError("a detector bug")
        seen.extend(r[0] for r in readings)
        return real(readings)

    stage.monitor.ingest = picky  # type: ignore[method-assign]
    now = datetime.now(UTC)
    readings = [("good-1", "speed_kmh", now, 40.0), ("poison", "speed_kmh", now, 1.0),
                ("good-2", "speed_kmh", now, 41.0)]
    devices = [("good-1", "traffic", ""), ("poison", "traffic", ""), ("good-2", "traffic", "")]
    assert await stage._detect_safely(devices, readings) == []
    assert sorted(seen) == ["good-1", "good-2"]
    assert stage.dropped_readings == 1
