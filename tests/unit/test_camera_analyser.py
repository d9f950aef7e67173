"""CameraAnalyser on synthetic road scenes: each fault gets its label, each nuisance stays quiet."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest

from analytics.camera import CameraAnalyser
from analytics.camera.analyser import SnapshotResult

pytestmark = pytest.mark.unit

W, H = 640, 360
T0 = datetime(2024, 5, 1, 12, tzinfo=UTC)
Img = np.ndarray


class Road:
    """A textured road seen from a pole, with vehicles driving along three lanes."""

    def __init__(self, seed: int = 1, n_vehicles: int = 4) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        bg = np.empty((H, W, 3), np.float32)
        bg[:] = (70, 110, 80)  # verges
        bg[120:300] = (95, 95, 95)  # asphalt
        bg += cv2.GaussianBlur(rng.normal(0, 14, (H, W)).astype(np.float32), (0, 0), 1.5)[..., None]
        for y in (180, 240):
            for x in range(0, W, 80):
                cv2.rectangle(bg, (x, y - 2), (x + 40, y + 2), (230, 230, 230), -1)
        for k in range(6):  # buildings and signs: strong static structure
            x = 20 + k * 105
            cv2.rectangle(bg, (x, 10), (x + 70, 100), tuple(float(v) for v in rng.uniform(40, 200, 3)), -1)
            cv2.rectangle(bg, (x + 10, 25), (x + 30, 45), (30, 30, 30), -1)
            cv2.rectangle(bg, (x + 40, 60), (x + 60, 80), (220, 220, 200), -1)
        self.bg = bg
        self.cars = [
            (float(rng.uniform(0, W)), 150.0 + 55 * (i % 3), float(rng.uniform(25, 60)) * (1 if i % 2 else -1),
             tuple(float(v) for v in rng.uniform(20, 240, 3)))
            for i in range(n_vehicles)
        ]

    def frame(self, t: int, *, gain: float = 1.0, noise: float = 2.0, cars: bool = True) -> Img:
        img = self.bg.copy()
        if cars:
            for x0, y, v, colour in self.cars:
                x = int((x0 + v * t) % (W + 120)) - 60
                cv2.rectangle(img, (x, int(y)), (x + 70, int(y) + 32), colour, -1)
                cv2.rectangle(img, (x + 45, int(y) + 5), (x + 62, int(y) + 27), (40, 40, 50), -1)
        n = np.empty(img.shape, np.float32)
        cv2.randn(n, 0.0, noise)  # sensor noise, fresh every snapshot
        return np.clip(img * gain + n, 0, 255).astype(np.uint8)


def jpeg(img: Img, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def run(frames: list[bytes]) -> list[SnapshotResult]:
    an = CameraAnalyser("cam-test")
    return [an.analyse(b, T0 + timedelta(seconds=5 * i)) for i, b in enumerate(frames)]


def with_fault(fault: Callable[[Img, int], Img], clean: int = 16, faulty: int = 4, seed: int = 1) -> list[str]:
    """Labels of the faulty snapshots after `clean` healthy ones."""
    road = Road(seed)
    frames = [jpeg(road.frame(t), 80 + t % 15) for t in range(clean)]
    frames += [jpeg(fault(road.frame(t), t), 80 + t % 15) for t in range(clean, clean + faulty)]
    res = run(frames)
    assert all(r.label == "ok" for r in res[:clean]), [r.label for r in res[:clean]]
    return [r.label for r in res[clean:]]


def first_label(labels: list[str], want: str, within: int = 2) -> None:
    assert want in labels[:within], labels


# ---------------------------------------------------------------- faults


def test_black_screen() -> None:
    def black(img: Img, t: int) -> Img:
        return np.clip(np.random.default_rng(t).normal(6, 1.5, img.shape), 0, 255).astype(np.uint8)

    first_label(with_fault(black), "black", within=1)


def test_blue_screen() -> None:
    def blue(img: Img, t: int) -> Img:
        out = np.empty_like(img)
        out[:] = (180, 10, 10)
        return out

    first_label(with_fault(blue), "black", within=1)


def test_undecodable_snapshot_is_video_loss() -> None:
    res = run([b"not a jpeg"])
    assert res[0].label == "black" and res[0].findings


def test_blur() -> None:
    first_label(with_fault(lambda img, t: cv2.GaussianBlur(img, (0, 0), 4.0)), "blur")


def test_occlusion() -> None:
    def cover(img: Img, t: int) -> Img:
        out = img.copy()
        pts = np.array([[0, 0], [380, 0], [330, 200], [420, 360], [0, 360]], np.int32)
        cv2.fillPoly(out, [pts], (30, 35, 25))
        return out

    first_label(with_fault(cover), "occlusion")


def test_shift_is_reported_then_becomes_the_reference() -> None:
    m = np.float32([[1, 0, 0.14 * W], [0, 1, -0.06 * H]])

    def move(img: Img, t: int) -> Img:
        return cv2.warpAffine(img, m, (W, H), borderMode=cv2.BORDER_REFLECT_101)

    labels = with_fault(move, faulty=16)
    first_label(labels, "shift")
    assert labels[-6:] == ["ok"] * 6, labels  # re-learned the new view


def test_brightness_failure() -> None:
    first_label(with_fault(lambda img, t: (img * 0.2).astype(np.uint8)), "brightness", within=1)


def test_heavy_noise() -> None:
    def noisy(img: Img, t: int) -> Img:
        n = np.random.default_rng(t).normal(0, 30, img.shape)
        return np.clip(img + n, 0, 255).astype(np.uint8)

    first_label(with_fault(noisy), "noise", within=1)


def test_freeze_busy_scene() -> None:
    road = Road(2, n_vehicles=6)
    stuck = road.frame(15)
    frames = [jpeg(road.frame(t), 80 + t % 15) for t in range(16)]
    frames += [jpeg(stuck, q) for q in (77, 91, 84, 88)]  # re-encoded, so the bytes differ
    labels = [r.label for r in run(frames)]
    assert labels[:16] == ["ok"] * 16
    first_label(labels[16:], "freeze")


def test_freeze_identical_bytes() -> None:
    road = Road(3)
    frames = [jpeg(road.frame(t)) for t in range(12)]
    frames += [frames[-1]] * 2
    assert run(frames)[12].label == "freeze"


# ---------------------------------------------------------------- nuisances


def _quiet(frames: list[bytes]) -> list[SnapshotResult]:
    res = run(frames)
    assert [r.label for r in res] == ["ok"] * len(res), [(i, r.label) for i, r in enumerate(res) if r.label != "ok"]
    return res


def test_slow_exposure_drift_is_not_a_fault() -> None:
    road = Road(5)
    _quiet([jpeg(road.frame(t, gain=1.0 - 0.3 * t / 40)) for t in range(40)])


def test_bus_filling_half_the_frame_for_one_snapshot() -> None:
    road = Road(6)
    frames = []
    for t in range(30):
        img = road.frame(t)
        if t == 20:
            cv2.rectangle(img, (40, 60), (600, 250), (200, 190, 60), -1)
            for x in range(60, 580, 60):
                cv2.rectangle(img, (x, 80), (x + 40, 130), (50, 60, 70), -1)
        frames.append(jpeg(img))
    _quiet(frames)


def test_empty_static_night_scene_is_not_frozen() -> None:
    road = Road(7)
    res = _quiet([jpeg(road.frame(t, gain=0.3, noise=3.0, cars=False)) for t in range(40)])
    assert max(r.activity for r in res[1:]) < 0.01


def test_on_screen_timestamp_is_not_a_fault() -> None:
    road = Road(8)
    frames = []
    for t in range(30):
        img = road.frame(t, cars=t % 3 == 0)
        stamp = (T0 + timedelta(seconds=5 * t)).strftime("%Y-%m-%d %H:%M:%S")
        cv2.putText(img, stamp, (10, 345), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        frames.append(jpeg(img))
    _quiet(frames)


# ---------------------------------------------------------------- activity and state


def test_activity_and_object_count() -> None:
    road = Road(9, n_vehicles=3)
    res = run([jpeg(road.frame(t)) for t in range(20)])
    assert all(r.activity > 0.005 for r in res[10:])
    assert 1 <= max(r.objects for r in res[10:]) <= 8


def test_state_round_trip_and_size() -> None:
    road = Road(10)
    a = CameraAnalyser("cam-a")
    for t in range(12):
        a.analyse(jpeg(road.frame(t)), T0 + timedelta(seconds=5 * t))
    b = CameraAnalyser.from_state("cam-a", pickle.loads(pickle.dumps(a.state_dict())))
    nxt = jpeg(road.frame(12))
    ra, rb = a.analyse(nxt, T0), b.analyse(nxt, T0)
    assert (ra.label, ra.activity) == (rb.label, rb.activity)
    assert a.memory_bytes() < 128_000
