"""Camera snapshots: valid JPEGs that change over time; faults look like the fault."""

from __future__ import annotations

import numpy as np
import pytest

from ingest.parse import jpeg_size
from simulators.scene import SceneRenderer, decode, sharpness

pytestmark = pytest.mark.unit

T = 1_763_400_000.0


@pytest.fixture(scope="module")
def cam() -> SceneRenderer:
    return SceneRenderer("HP-LC-CAM-0001", seed=1, lanes=4)


def _shot(cam: SceneRenderer, t: float = T, light: float = 1.0, fault: str | None = None) -> np.ndarray:
    cam.frozen = None if fault != "frozen" else cam.frozen
    return decode(cam.snapshot(t, "2025-11-18 08:00:00", light, 0.7, 0.0, fault))


def _scene(img: np.ndarray) -> np.ndarray:
    return img[40:]  # below the on-screen timestamp


def test_snapshot_is_a_complete_jpeg_of_the_requested_size(cam: SceneRenderer) -> None:
    data = cam.snapshot(T, "2025-11-18 08:00:00", 1.0, 0.5)
    assert jpeg_size(data) == (640, 360)
    assert jpeg_size(SceneRenderer("X", 1, 320, 180).snapshot(T, "x", 1.0, 0.5)) == (320, 180)


def test_scene_changes_over_time_and_with_daylight(cam: SceneRenderer) -> None:
    a, b = _shot(cam, T), _shot(cam, T + 60)
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1.0  # vehicles moved, noise differs
    night = _shot(cam, T, light=0.0)
    assert night.mean() < 0.5 * a.mean()


def test_black_frozen_blurred_covered_repointed(cam: SceneRenderer) -> None:
    normal = _shot(cam)
    assert _shot(cam, fault="black").mean() < 12
    first = cam.snapshot(T, "2025-11-18 08:00:00", 1.0, 0.7, 0.0, "frozen")
    assert cam.snapshot(T + 600, "2025-11-18 08:10:00", 0.2, 0.1, 0.0, "frozen") == first
    assert sharpness(_scene(_shot(cam, fault="blurred"))) < 0.2 * sharpness(_scene(normal))
    covered = _scene(_shot(cam, fault="covered"))
    assert covered.std() < 15 and covered.mean() < 90
    moved = _shot(cam, fault="repointed")
    assert np.abs(_scene(moved).astype(int) - _scene(normal).astype(int)).mean() > 30
