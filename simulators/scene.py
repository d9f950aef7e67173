"""Synthetic camera snapshots: a road in perspective with moving vehicles, day/night light, sensor noise, OSD.

The scene is a function of time (vehicles move, light follows the hour, the timestamp changes), so
successive snapshots differ the way a real camera's do; faults alter it the way a real fault would.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from simulators.signals import device_rng

logger = logging.getLogger(__name__)

_PALETTE = [(235, 235, 235), (30, 30, 30), (60, 60, 190), (170, 120, 40), (140, 140, 150), (40, 120, 200),
            (90, 90, 90), (200, 200, 210), (40, 160, 60), (50, 50, 140)]
_D_NEAR, _D_FAR = 6.0, 160.0  # metres of road visible in front of the camera


class SceneRenderer:
    """Renders one camera's JPEG snapshots.

    Args:
        camera_id: shown in the on-screen display and used to seed the scene layout.
        seed: scenario seed.
        width, height: image size.
        lanes: lanes of the watched road (2–6 drawn).
        quality: JPEG quality.
    """

    def __init__(self, camera_id: str, seed: int, width: int = 640, height: int = 360, lanes: int = 4,
                 quality: int = 80) -> None:
        self.camera_id = camera_id
        self.w, self.h = width, height
        self.lanes = max(2, min(6, lanes or 2))
        self.quality = quality
        rng = device_rng(seed, f"scene:{camera_id}")
        self.np_rng = np.random.default_rng(rng.getrandbits(32))
        self.horizon = int(height * rng.uniform(0.32, 0.42))
        self.vanish_x = width * rng.uniform(0.42, 0.58)
        self.bg = self._background(rng)
        self._alt: np.ndarray | None = None
        self._alt_seed = rng.getrandbits(32)
        # Pre-drawn sensor noise frames: drawing fresh noise per frame would dominate the render time.
        self.noise = [self.np_rng.integers(0, 17, (height, width, 3), dtype=np.uint8) for _ in range(3)]
        # Vehicles per lane: phase along the road, colour, kind (0 motorbike, 1 car, 2 truck/bus).
        self.fleet = [[(rng.random(), rng.choice(_PALETTE), rng.choices((0, 1, 2), (0.55, 0.35, 0.10))[0])
                       for _ in range(16)] for _ in range(self.lanes)]
        self.frozen: bytes | None = None

    def _x_at(self, frac: float, y: float) -> float:
        """Screen x of a point at ``frac`` (0 left edge .. 1 right edge) across the road at row ``y``."""
        k = (y - self.horizon) / (self.h - self.horizon)
        left = self.vanish_x + (-0.04 * self.w - self.vanish_x) * k
        right = self.vanish_x + (1.04 * self.w - self.vanish_x) * k
        return left + (right - left) * frac

    def _y_at(self, d: float) -> float:
        return self.horizon + (self.h - self.horizon) * _D_NEAR / d

    def _background(self, rng: object) -> np.ndarray:
        w, h, hz = self.w, self.h, self.horizon
        img = np.zeros((h, w, 3), np.uint8)
        sky = np.linspace(235, 175, hz, dtype=np.float32)[:, None]
        img[:hz] = np.dstack([sky, sky * 0.93, sky * 0.80]).astype(np.uint8)[:, :, ::-1] if hz else img[:hz]
        img[hz:] = (70, 110, 85)  # verges
        gen = np.random.default_rng(int(self.vanish_x * 1000) + hz)
        x = 0
        while x < w:  # skyline of buildings with lit/unlit windows
            bw = int(gen.integers(25, 70))
            bh = int(gen.integers(15, max(16, hz - 5)))
            shade = int(gen.integers(90, 190))
            cv2.rectangle(img, (x, hz - bh), (x + bw, hz), (shade, shade - 10, shade - 25), -1)
            for wy in range(hz - bh + 4, hz - 4, 8):
                for wx in range(x + 4, x + bw - 4, 9):
                    cv2.rectangle(img, (wx, wy), (wx + 3, wy + 4), (shade - 50, shade - 40, shade - 30), -1)
            x += bw + int(gen.integers(0, 12))
        road = np.array([[self._x_at(0, hz), hz], [self._x_at(1, hz), hz], [self._x_at(1, h), h],
                         [self._x_at(0, h), h]], np.int32)
        cv2.fillPoly(img, [road], (88, 88, 92))
        # Asphalt grain, static: what makes the JPEG compress like a real road.
        grain = gen.normal(0, 6, (h, w, 1)).astype(np.int16)
        img = np.clip(img.astype(np.int16) + grain, 0, 255).astype(np.uint8)
        for lane in range(1, self.lanes):
            frac = lane / self.lanes
            solid = lane == self.lanes // 2
            d = _D_NEAR
            while d < _D_FAR:
                y0, y1 = self._y_at(d), self._y_at(d + (1000 if solid else 3.0))
                cv2.line(img, (int(self._x_at(frac, y0)), int(y0)), (int(self._x_at(frac, y1)), int(y1)),
                         (210, 210, 210) if not solid else (60, 200, 230), max(1, int(3 * _D_NEAR / d)))
                d += 1000 if solid else 9.0
        for frac in (0.01, 0.99):
            cv2.line(img, (int(self._x_at(frac, hz)), hz), (int(self._x_at(frac, h)), h), (230, 230, 230), 2)
        return img

    def _alternate(self) -> np.ndarray:
        """The view after someone turned the camera: sky, a building facade, no road."""
        if self._alt is None:
            gen = np.random.default_rng(self._alt_seed)
            img = np.zeros((self.h, self.w, 3), np.uint8)
            img[:] = (220, 200, 170)
            fx = int(self.w * gen.uniform(0.2, 0.5))
            cv2.rectangle(img, (fx, int(self.h * 0.25)), (self.w, self.h), (120, 140, 170), -1)
            for wy in range(int(self.h * 0.3), self.h, 28):
                for wx in range(fx + 10, self.w, 34):
                    cv2.rectangle(img, (wx, wy), (wx + 18, wy + 16), (80, 70, 60), -1)
            cv2.line(img, (0, int(self.h * 0.15)), (self.w, int(self.h * 0.05)), (40, 40, 40), 2)  # a cable
            grain = gen.normal(0, 5, (self.h, self.w, 1)).astype(np.int16)
            self._alt = np.clip(img.astype(np.int16) + grain, 0, 255).astype(np.uint8)
        return self._alt

    def _vehicles(self, img: np.ndarray, t: float, density: float, jam: float, night: bool) -> None:
        per_lane = min(16, round(2 + 9 * density + 6 * jam))
        speed = 14.0 * (1 - 0.95 * jam)  # m/s
        items = []
        for lane, cars in enumerate(self.fleet):
            towards = lane < self.lanes // 2  # left half comes towards the camera
            for i, (phase, colour, vkind) in enumerate(cars[:per_lane]):
                # Evenly spread slots plus a per-vehicle phase; jams close up the gaps.
                u = (phase / per_lane + i / per_lane + (speed * t / (_D_FAR - _D_NEAR)) * (-1 if towards else 1)) % 1
                d = _D_NEAR + u * (_D_FAR - _D_NEAR) * (0.35 if jam > 0.5 else 1.0)
                items.append((d, lane, colour, vkind))
        for d, lane, colour, vkind in sorted(items, reverse=True):  # far first, so near vehicles overlap them
            y = self._y_at(d)
            lane_w = self._x_at((lane + 1) / self.lanes, y) - self._x_at(lane / self.lanes, y)
            cx = self._x_at((lane + 0.5) / self.lanes, y)
            vw = lane_w * (0.25, 0.7, 0.85)[vkind]
            vh = vw * (1.6, 0.75, 1.1)[vkind]
            x0, y0, x1, y1 = int(cx - vw / 2), int(y - vh), int(cx + vw / 2), int(y)
            if y1 - y0 < 1:
                continue
            cv2.rectangle(img, (x0, y0), (x1, y1), colour, -1)
            if vkind and y1 - y0 > 4:
                cv2.rectangle(img, (x0 + 1, y0 + 1), (x1 - 1, y0 + (y1 - y0) // 3), (50, 40, 30), -1)
            if night:
                r = max(1, int(vw / 10))
                cv2.circle(img, (x0 + r, y1 - r), r, (200, 255, 255), -1)
                cv2.circle(img, (x1 - r, y1 - r), r, (200, 255, 255), -1)

    def _osd(self, img: np.ndarray, label: str) -> None:
        text = f"{label}  {self.camera_id}"
        scale = max(0.35, self.w / 1400)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        cv2.rectangle(img, (4, 4), (12 + tw, 12 + th + base), (0, 0, 0), -1)
        cv2.putText(img, text, (8, 8 + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)

    def frame(self, t: float, osd: str, light: float, density: float, jam: float = 0.0,
              fault: str | None = None) -> np.ndarray:
        """The BGR image at ``t``: ``light`` 0..1 (night..day), ``density`` 0..1 traffic, ``jam`` 0..1."""
        k = int(t) % len(self.noise)
        if fault == "black":
            img = _minus(self.noise[k], 12)  # a dead sensor still shows a little noise
        elif fault == "covered":
            img = np.empty_like(self.bg)
            img[:] = (38, 44, 52)
            ramp = np.linspace(0, 18, self.w, dtype=np.uint8)[None, :, None]
            img = cv2.add(img, np.broadcast_to(ramp, img.shape).copy())
            img = _minus(cv2.add(img, self.noise[k] // 4), 2)
        else:
            img = (self._alternate() if fault == "repointed" else self.bg).copy()
            if fault != "repointed":
                self._vehicles(img, t, density, jam, light < 0.5)
            gain = 0.18 + 0.82 * light
            img = cv2.convertScaleAbs(img, alpha=gain)
            if light < 0.5:
                # Sodium street lights: warm glows along the top of the road.
                for i in range(1, 5):
                    y = int(self._y_at(_D_NEAR * 2.2 * i))
                    glow = (int(self._x_at(-0.03, y)), max(0, y - 30 // i))
                    cv2.circle(img, glow, max(2, 7 // i), (90, 170, 230), -1)
            noise = self.noise[k] if light > 0.5 else cv2.add(self.noise[k], self.noise[(k + 1) % 3])
            img = _minus(cv2.add(img, noise), 8)
            if fault == "blurred":
                img = cv2.GaussianBlur(img, (0, 0), 7)
        self._osd(img, osd)
        return img

    def snapshot(self, t: float, osd: str, light: float, density: float, jam: float = 0.0,
                 fault: str | None = None) -> bytes:
        """JPEG bytes of the scene at ``t``; a frozen camera repeats the exact bytes of its last good frame."""
        if fault == "frozen":
            if self.frozen is None:
                self.frozen = self.snapshot(t, osd, light, density, jam, None)
            return self.frozen
        ok, buf = cv2.imencode(".jpg", self.frame(t, osd, light, density, jam, fault),
                               [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        data = buf.tobytes()
        self.frozen = data  # a camera freezes on whatever it showed last
        return data


def _minus(img: np.ndarray, value: int) -> np.ndarray:
    """Saturating subtraction of a constant (the noise frames are offset to stay non-negative)."""
    # OpenCV takes a per-channel scalar tuple here; its type stubs only know arrays.
    return cv2.subtract(img, (value, value, value, 0))  # type: ignore[call-overload]


def sharpness(img: np.ndarray) -> float:
    """Variance of the Laplacian: low for blurred or featureless images."""
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def decode(jpeg: bytes) -> np.ndarray:
    """Decode JPEG bytes to a BGR image."""
    img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("not a decodable JPEG")
    return img

