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

    def positions(self, t: int) -> list[tuple[int, int, tuple[float, ...]]]:
        """Top-left corner and colour of each vehicle at snapshot ``t``."""
        return [(int((x0 + v * t) % (W + 120)) - 60, int(y), c) for x0, y, v, c in self.cars]

    def frame(self, t: int, *, gain: float = 1.0, noise: float = 2.0, cars: bool = True,
              draw: Callable[[Img, int], None] | None = None) -> Img:
        img = self.bg.copy()
        if cars:
            for x, y, colour in self.positions(t):
                cv2.rectangle(img, (x, y), (x + 70, y + 32), colour, -1)
                cv2.rectangle(img, (x + 45, y + 5), (x + 62, y + 27), (40, 40, 50), -1)
        if draw is not None:
            draw(img, t)  # scene content that the lighting also scales (parked cars, headlights)
        n = self.rng.normal(0.0, noise, img.shape).astype(np.float32)  # sensor noise, fresh every snapshot
        return np.clip(img * gain + n, 0, 255).astype(np.uint8)


def jpeg(img: Img, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def run(frames: list[bytes]) -> list[SnapshotResult]:
    an = CameraAnalyser("cam-test")
    return [an.analyse(b, T0 + timedelta(seconds=5 * i)) for i, b in enumerate(frames)]


def with_fault(fault: Callable[[Img, int], Img], clean: int = 16, faulty: int = 4, seed: int = 1) -> list[str]:
    """Labels of the faulty snapshots after `clean` healthy ones (which must all be ok)."""
    road = Road(seed)
    frames = [jpeg(road.frame(t), 80 + t % 15) for t in range(clean)]
    frames += [jpeg(fault(road.frame(t), t), 80 + t % 15) for t in range(clean, clean + faulty)]
    res = run(frames)
    assert all(r.label == "ok" for r in res[:clean]), [r.label for r in res[:clean]]
    return [r.label for r in res[clean:]]


def first_label(labels: list[str], want: str, within: int = 2) -> None:
    assert want in labels[:within], labels
    assert labels[:labels.index(want)] == ["ok"] * labels.index(want), labels  # nothing wrong first


def warp(img: Img, dx: float, dy: float, angle: float = 0.0) -> Img:
    m = cv2.getRotationMatrix2D((W / 2, H / 2), angle, 1.0)
    m[:, 2] += np.array([dx, dy])
    return cv2.warpAffine(img, m, (W, H), borderMode=cv2.BORDER_REFLECT_101)


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize("screen", ["black", "blue", "grey"])
def test_video_loss_screens(screen: str) -> None:
    colour = {"black": (6, 6, 6), "blue": (180, 10, 10), "grey": (110, 110, 110)}[screen]

    def lost(img: Img, t: int) -> Img:
        out = np.empty(img.shape, np.float32)
        out[:] = colour
        return np.clip(out + np.random.default_rng(t).normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)

    first_label(with_fault(lost), "black", within=1)


def test_undecodable_snapshot_is_video_loss() -> None:
    res = run([b"not a jpeg"])
    assert res[0].label == "black" and res[0].findings


@pytest.mark.parametrize("sigma", [4.0, 1.5])
def test_blur(sigma: float) -> None:
    first_label(with_fault(lambda img, t: cv2.GaussianBlur(img, (0, 0), sigma)), "blur")


@pytest.mark.parametrize("cover", ["large", "partial"])
def test_occlusion(cover: str) -> None:
    pts = {"large": [[0, 0], [560, 0], [500, 200], [600, 360], [0, 360]],  # ~80 % of the view
           "partial": [[0, 0], [300, 0], [220, 200], [260, 360], [0, 360]]}[cover]  # ~35 %

    def covered(img: Img, t: int) -> Img:
        out = img.copy()
        cv2.fillPoly(out, [np.array(pts, np.int32)], (30, 35, 25))
        return cv2.GaussianBlur(out, (0, 0), 0.8)

    first_label(with_fault(covered), "occlusion")


@pytest.mark.parametrize(("dx", "dy", "angle"), [(0.14 * W, -0.06 * H, 0.0), (-0.05 * W, 0.03 * H, 0.0),
                                                  (0.04 * W, 0.0, 6.0)])
def test_shift_is_reported_then_becomes_the_reference(dx: float, dy: float, angle: float) -> None:
    labels = with_fault(lambda img, t: warp(img, dx, dy, angle), faulty=16)
    first_label(labels, "shift")
    assert labels.count("shift") == 1, labels  # reported once ...
    assert labels[-6:] == ["ok"] * 6, labels  # ... then the new view is the reference


@pytest.mark.parametrize(("factor", "within"), [(0.2, 1), (0.4, 2)])
def test_brightness_failure(factor: float, within: int) -> None:
    first_label(with_fault(lambda img, t: (img * factor).astype(np.uint8)), "brightness", within=within)


@pytest.mark.parametrize("sigma", [30.0, 12.0])
def test_heavy_noise(sigma: float) -> None:
    def noisy(img: Img, t: int) -> Img:
        n = np.random.default_rng(t).normal(0, sigma, img.shape)
        return np.clip(img + n, 0, 255).astype(np.uint8)

    first_label(with_fault(noisy), "noise", within=1)


def test_salt_and_pepper_noise() -> None:
    def speckled(img: Img, t: int) -> Img:
        out = img.copy()
        r = np.random.default_rng(t).random(img.shape[:2])
        out[r < 0.02] = 0
        out[r > 0.98] = 255
        return out

    first_label(with_fault(speckled), "noise", within=1)


def test_freeze_busy_scene() -> None:
    road = Road(2, n_vehicles=6)
    stuck = road.frame(15)
    frames = [jpeg(road.frame(t), 80 + t % 15) for t in range(16)]
    frames += [jpeg(stuck, q) for q in (77, 91, 84, 88)]  # re-encoded, so the bytes differ
    labels = [r.label for r in run(frames)]
    assert labels[:16] == ["ok"] * 16
    assert labels[16] == "freeze", labels  # a camera that is never still: frozen at once


def test_freeze_identical_bytes() -> None:
    road = Road(3)
    frames = [jpeg(road.frame(t)) for t in range(12)]
    frames += [frames[-1]] * 2
    assert run(frames)[12].label == "freeze"


def test_freeze_of_a_quiet_scene_needs_a_longer_spell() -> None:
    road = Road(4, n_vehicles=1)
    # a single car now and then: the picture is often still for a snapshot
    frames = [jpeg(road.frame(t, cars=t % 3 == 0)) for t in range(20)]
    stuck = road.frame(19, cars=False)
    frames += [jpeg(stuck, q) for q in (80, 90, 82, 88, 84, 86)]
    labels = [r.label for r in run(frames)]
    assert labels[:20] == ["ok"] * 20, labels
    assert labels[20] == "ok" and "freeze" in labels[21:], labels


# ---------------------------------------------------------------- nuisances


def _quiet(frames: list[bytes]) -> list[SnapshotResult]:
    res = run(frames)
    assert [r.label for r in res] == ["ok"] * len(res), [(i, r.label) for i, r in enumerate(res) if r.label != "ok"]
    return res


def test_slow_exposure_drift_is_not_a_fault() -> None:
    road = Road(5)
    _quiet([jpeg(road.frame(t, gain=1.0 - 0.3 * t / 40)) for t in range(40)])


def test_dusk_to_night_is_not_a_fault() -> None:
    road = Road(11)
    # an hour of dusk at a snapshot a minute: the light falls to a quarter, sensor noise rises
    _quiet([jpeg(road.frame(t, gain=0.25 ** (t / 60), noise=2.0 + 2.0 * t / 60)) for t in range(70)])


def test_auto_exposure_swing_for_one_snapshot_is_not_a_fault() -> None:
    road = Road(12)
    # a white lorry fills the view's bottom: the camera halves its exposure for one snapshot
    frames = []
    for t in range(30):
        if t == 20:
            def lorry(img: Img, _t: int) -> None:
                cv2.rectangle(img, (0, 200), (W, H), (250, 250, 250), -1)
            frames.append(jpeg(road.frame(t, gain=0.5, draw=lorry)))
        else:
            frames.append(jpeg(road.frame(t)))
    _quiet(frames)


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


def test_rain_is_not_a_fault() -> None:
    road = Road(13)

    def rain(img: Img, t: int) -> None:
        rng = np.random.default_rng(100 + t)
        for x, y, length in zip(rng.integers(0, W, 250), rng.integers(0, H, 250), rng.integers(8, 20, 250),
                                strict=True):
            cv2.line(img, (int(x), int(y)), (int(x) + 2, int(y) + int(length)), (200, 200, 210), 1)

    _quiet([jpeg(road.frame(t, draw=rain if t >= 12 else None)) for t in range(36)])


def test_headlights_at_night_are_not_a_fault() -> None:
    road = Road(14)

    def headlights(img: Img, t: int) -> None:
        for x, y, _ in road.positions(t):
            for hx in (x + 8, x + 62):  # two lamps and their glare on the wet road
                cv2.circle(img, (hx, y + 16), 14, (255, 255, 255), -1)
                cv2.ellipse(img, (hx, y + 40), (10, 30), 0, 0, 360, (170, 170, 170), -1)

    # night: the scene is dark, the lamps saturate (drawn after the scene is dimmed)
    frames = []
    for t in range(36):
        img = road.frame(t, gain=0.25, noise=3.0, cars=False).astype(np.float32)
        headlights(img, t)
        frames.append(jpeg(np.clip(img, 0, 255).astype(np.uint8)))
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


def test_parked_car_driving_off_is_not_a_cover() -> None:
    road = Road(15)

    def parked(img: Img, t: int) -> None:
        if t < 14:  # parked from the start, so learned as background, then gone
            cv2.rectangle(img, (250, 120), (470, 230), (235, 235, 235), -1)
            cv2.rectangle(img, (300, 135), (420, 175), (40, 45, 55), -1)

    _quiet([jpeg(road.frame(t, draw=parked)) for t in range(36)])


# ---------------------------------------------------------------- activity, findings and state


def test_activity_and_object_count() -> None:
    road = Road(9, n_vehicles=3)
    res = run([jpeg(road.frame(t)) for t in range(20)])
    assert all(r.activity > 0.005 for r in res[10:])
    assert 1 <= max(r.objects for r in res[10:]) <= 8


def test_finding_has_type_confidence_frame_and_explanation() -> None:
    road = Road(10)
    frames = [jpeg(road.frame(t)) for t in range(14)] + [jpeg((road.frame(14) * 0.15).astype(np.uint8))] * 1
    res = run(frames)
    f = res[-1].findings[0]
    assert (f.type, f.detail["index"]) == ("brightness", 14)
    assert 0.5 <= f.score <= 1.0 and f.explanation and f.series == "snapshot"


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
