"""A lens covered on a busy road is an occlusion, not a frozen stream (the cover is still, the stream is not)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from analytics.camera.analyser import CameraAnalyser
from simulators.scene import SceneRenderer

pytestmark = pytest.mark.unit


def _labels(fault_from: int, n: int, fault: str) -> list[str]:
    scene = SceneRenderer("HP-HB-CAM-0001", seed=11)
    an = CameraAnalyser("HP-HB-CAM-0001")
    t0 = datetime(2026, 12, 7, 0, 0, tzinfo=UTC)  # 07:00 in Hai Phong: the morning rush, every snapshot moves
    found = []
    for i in range(n):
        t = 1_796_601_600.0 + 2.0 * i
        jpeg = scene.snapshot(t, "07:00", light=1.0, density=0.9, fault=fault if i >= fault_from else None)
        found += [f.type for f in an.analyse(jpeg, t0 + timedelta(seconds=2 * i)).findings]
    return found


def test_a_lens_covered_during_the_rush_is_reported_as_covered() -> None:
    found = _labels(300, 310, "covered")
    assert "occlusion" in found and "freeze" not in found, found


def test_a_stalled_stream_on_the_same_road_is_still_a_freeze() -> None:
    assert "freeze" in _labels(300, 310, "frozen")
