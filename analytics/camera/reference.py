"""What a camera normally looks like (:class:`Ref`) and how much its scores wander (:class:`Spread`)."""

from __future__ import annotations

import cv2
import numpy as np

from analytics.camera.config import CameraConfig
from analytics.camera.features import (
    F32,
    GRID_X,
    GRID_Y,
    THUMB_H,
    THUMB_W,
    Measures,
    cells,
    fine_cells,
    texture,
)

_LP_SIGMA = 2.0  # thumbnail low-pass: comparisons immune to focus and noise changes
_SHAKE = np.ones((3, 3), np.uint8)  # one thumbnail pixel either way (about 1% of the picture)


def lowpass(a: F32) -> F32:
    """Gaussian low-pass of a thumbnail."""
    return np.asarray(cv2.GaussianBlur(a, (0, 0), _LP_SIGMA), dtype=np.float32)


class Ref:
    """The learned scene: a background thumbnail and per-cell detail statistics.

    Each pixel (cell) learns only from snapshots where it did not change since the previous one,
    so passing vehicles and people stay out of the background while parked ones are absorbed.
    A fresh pixel learns fast (running mean), then settles to an exponential average, which
    follows slow change (dusk, seasons) but not a sudden one.
    """

    __slots__ = ("cell_count", "cell_mean", "cell_noise", "cell_tex", "contrast", "count", "edge", "fine_mean",
                 "fine_tex", "impulse", "lp", "mean", "sharp", "sharp2", "thumb")

    def __init__(self, m: Measures) -> None:
        self.thumb: F32 = m.thumb.copy()
        self.count = np.zeros((THUMB_H, THUMB_W), np.uint8)
        self.sharp: F32 = m.sharp.copy()
        self.sharp2: F32 = m.sharp2.copy()
        self.edge: F32 = m.edge.copy()
        self.cell_noise: F32 = m.cell_noise.copy()
        self.cell_count = np.zeros((GRID_Y, GRID_X), np.float32)
        self.impulse = m.impulse
        self._derive()

    def _derive(self) -> None:
        """Recompute the summaries of the background thumbnail."""
        self.lp = lowpass(self.thumb)
        tex = texture(self.thumb)
        self.cell_mean = cells(self.thumb)
        self.cell_tex = cells(tex)
        self.fine_mean = fine_cells(self.thumb)
        self.fine_tex = fine_cells(tex)
        self.mean = float(self.thumb.mean())
        self.contrast = float(self.thumb.std())

    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(getattr(getattr(self, k), "nbytes", 8) for k in self.__slots__)

    def coverage(self) -> float:
        """Share of the background seen steady at least twice."""
        return float(np.count_nonzero(self.count >= 2)) / self.count.size

    def update(self, m: Measures, prev: Measures, cfg: CameraConfig, g: float = 1.0, g_prev: float = 1.0,
               shaky: bool = False) -> None:
        """Blend a healthy snapshot in where it is steady against the previous one.

        Both snapshots are first brought to the reference's exposure (``g``, ``g_prev``: their gains
        against it), so an auto-exposure swing neither stops learning nor leaves patches learned
        at different exposures; the reference then follows the exposure itself only slowly
        (``exposure_follow``), as dusk does, not as a passing white lorry does. ``shaky``: the camera
        shakes in the wind (see ``CameraAnalyser.jitter``).
        """
        g, g_prev = max(g, 0.05), max(g_prev, 0.05)
        cur = m.thumb / g
        diff = np.abs(cur - prev.thumb / g_prev)
        steady = diff < cfg.steady_level
        a = np.where(steady, np.maximum(cfg.alpha_pixel, 1.0 / (self.count + 1.0)), 0.0).astype(np.float32)
        self.thumb += a * (cur * g ** cfg.exposure_follow - self.thumb)
        self.count += steady & (self.count < 255)
        if shaky:
            # on a camera shaking in the wind, the per-cell detail statistics also learn where the
            # content moved by a pixel: sharpness and grain belong to the optics and the sensor,
            # not to where the view sits (else they would never learn where the structure is)
            prev_n = prev.thumb / g_prev
            off = np.maximum(np.maximum(cur - cv2.dilate(prev_n, _SHAKE), cv2.erode(prev_n, _SHAKE) - cur), 0.0)
            cs = cells(off) < 0.5 * cfg.steady_level
        else:
            cs = cells(diff) < 0.5 * cfg.steady_level
        ac = np.where(cs, np.maximum(cfg.alpha_cell, 1.0 / (self.cell_count + 1.0)), 0.0).astype(np.float32)
        if not hasattr(self, "sharp2"):  # a state saved before this measure existed
            self.sharp2 = m.sharp2.copy()
        for name in ("sharp", "sharp2", "edge", "cell_noise"):
            val = getattr(self, name)
            val += ac * (getattr(m, name) - val)
        self.cell_count += cs
        self.impulse += cfg.alpha_cell * (m.impulse - self.impulse)
        self._derive()


class Spread:
    """Running level and mean absolute deviation of a score over healthy snapshots.

    Starts from a prior worth ``weight`` snapshots, so thresholds are cautious on a new camera and
    settle to what this camera actually shows.
    """

    __slots__ = ("dev", "level", "n", "weight")

    def __init__(self, level: float, dev: float, weight: float = 4.0) -> None:
        self.level, self.dev, self.n, self.weight = level, dev, 0, weight

    def update(self, x: float, alpha: float = 0.05) -> None:
        """Learn one healthy value."""
        self.n += 1
        a = max(alpha, 1.0 / (self.n + self.weight))
        self.level += a * (x - self.level)
        self.dev += a * (abs(x - self.level) - self.dev)
