"""Evidence for each fault: compares one snapshot's measures with the camera's learned reference.

All functions are pure; :class:`Ref` is the learned reference the analyser keeps per camera.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from analytics.camera.config import CameraConfig
from analytics.camera.features import F32, GRID_X, GRID_Y, THUMB_H, THUMB_W, Measures, cells

_LP_SIGMA = 2.0  # thumbnail low-pass: comparisons immune to focus and noise changes
_WINDOW = cv2.createHanningWindow((THUMB_W, THUMB_H), cv2.CV_32F)
_CELL_PX = THUMB_W // GRID_X


def lowpass(a: F32) -> F32:
    """Gaussian low-pass of a thumbnail."""
    return np.asarray(cv2.GaussianBlur(a, (0, 0), _LP_SIGMA), dtype=np.float32)


_CELL_NAMES = ("cell_coarse", "cell_fine", "cell_noise")


class Ref:
    """What a camera normally looks like: a background thumbnail and per-cell detail statistics.

    Each pixel (cell) learns only from snapshots where it did not change since the previous one,
    so passing vehicles and people stay out of the background while parked ones are absorbed.
    A fresh pixel learns fast (running mean), then settles to an exponential average.
    """

    __slots__ = ("cell_coarse", "cell_count", "cell_fine", "cell_mean", "cell_noise", "contrast", "count",
                 "impulse", "mean", "thumb")

    def __init__(self, m: Measures) -> None:
        self.thumb: F32 = m.thumb.copy()
        self.count = np.zeros((THUMB_H, THUMB_W), np.uint8)
        self.cell_coarse: F32 = m.cell_coarse.copy()
        self.cell_fine: F32 = m.cell_fine.copy()
        self.cell_noise: F32 = m.cell_noise.copy()
        self.cell_count = np.zeros((GRID_Y, GRID_X), np.float32)
        self.impulse = m.impulse
        self.cell_mean: F32 = cells(self.thumb)
        self.mean = float(self.thumb.mean())
        self.contrast = float(self.thumb.std())

    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return self.thumb.nbytes + self.count.nbytes + 5 * self.cell_count.nbytes + 24

    def coverage(self) -> float:
        """Share of the background seen steady at least twice."""
        return float(np.count_nonzero(self.count >= 2)) / self.count.size

    def update(self, m: Measures, prev: Measures, cfg: CameraConfig) -> None:
        """Blend a healthy snapshot in where it is steady against the previous one."""
        diff = np.abs(m.thumb - prev.thumb)
        steady = diff < cfg.steady_level
        a = np.where(steady, np.maximum(cfg.alpha_pixel, 1.0 / (self.count + 1.0)), 0.0).astype(np.float32)
        self.thumb += a * (m.thumb - self.thumb)
        self.count += steady & (self.count < 255)
        cs = cells(diff) < 0.5 * cfg.steady_level
        ac = np.where(cs, np.maximum(cfg.alpha_cell, 1.0 / (self.cell_count + 1.0)), 0.0).astype(np.float32)
        for name in _CELL_NAMES:
            cur = getattr(self, name)
            cur += ac * (getattr(m, name) - cur)
        self.cell_count += cs
        self.impulse += cfg.alpha_cell * (m.impulse - self.impulse)
        self.cell_mean = cells(self.thumb)
        self.mean = float(self.thumb.mean())
        self.contrast = float(self.thumb.std())


@dataclass(slots=True)
class Comparison:
    """Fault candidates (name -> confidence) and the raw scores behind them."""

    candidates: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


def gain(m: Measures, ref: Ref) -> float:
    """Global exposure gain of the snapshot against the reference (median of cell ratios)."""
    ok = ref.cell_mean > 12.0
    if int(ok.sum()) >= 10:
        return float(np.median(m.cell_mean[ok] / ref.cell_mean[ok]))
    return m.mean / max(ref.mean, 1.0)


def static_cells(m: Measures, ref: Ref, g: float, ref_thumb: F32 | None = None) -> np.ndarray:
    """Cells whose low-passed content matches the gain-adjusted reference (or a warped copy of it)."""
    base = ref.thumb if ref_thumb is None else ref_thumb
    d = cells(np.abs(lowpass(m.thumb) - g * lowpass(base)))
    return d < 5.0 + 0.25 * g * ref.cell_coarse


def _inside(dx: float, dy: float) -> np.ndarray:
    """Cells that a (dx, dy) thumbnail displacement keeps inside the frame."""
    ys = np.arange(GRID_Y) * _CELL_PX
    xs = np.arange(GRID_X) * _CELL_PX
    oky = (ys - dy >= 0) & (ys + _CELL_PX - dy <= THUMB_H)
    okx = (xs - dx >= 0) & (xs + _CELL_PX - dx <= THUMB_W)
    return np.outer(oky, okx)


def _sig(x: float) -> float:
    """Map a margin (0 = at threshold) to a confidence in 0.5..1."""
    return float(0.5 + 0.5 * np.tanh(max(x, 0.0)))


def black(m: Measures, ref: Ref | None, cfg: CameraConfig) -> float:
    """Confidence that the snapshot is a uniform video-loss screen (0 if not)."""
    thr = cfg.black_contrast if ref is None else min(cfg.black_contrast, 0.25 * ref.contrast)
    # gradient of residual noise on a flat screen stays a few grey levels; scenes have far more
    coarse_max = 4.0 if ref is None else max(4.0, 0.1 * float(ref.cell_coarse.mean()))
    if m.contrast < thr and float(m.cell_coarse.mean()) < coarse_max:
        return _sig(2.0 * (1.0 - m.contrast / thr))
    return 0.0


def activity(m: Measures, prev: Measures | None, ref: Ref | None, cfg: CameraConfig) -> tuple[float, int]:
    """Scene activity: share of the picture that changed since the last snapshot, moving-blob count."""
    if prev is None:
        return 0.0, 0
    level = float(np.count_nonzero(np.abs(m.thumb - prev.thumb) > cfg.motion_level)) / m.thumb.size
    if ref is None:
        return level, 0
    fg0 = (np.abs(m.thumb - gain(m, ref) * ref.thumb) > cfg.object_level).astype(np.uint8)
    fg = cv2.morphologyEx(fg0, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, _, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    return level, int(np.count_nonzero(stats[1:n, cv2.CC_STAT_AREA] >= cfg.object_min_px))


def compare(m: Measures, ref: Ref, cfg: CameraConfig) -> Comparison:
    """Evidence for brightness, noise, occlusion, shift and blur against the reference."""
    out = Comparison()
    sc = out.scores
    g = gain(m, ref)
    ratio = m.mean / max(ref.mean, 1.0)
    static = static_cells(m, ref, g)
    intact = static_cells(m, ref, 1.0)  # unchanged without any exposure correction
    static |= intact
    textured = ref.cell_coarse >= max(4.0, float(np.median(ref.cell_coarse)))
    n_tex = int(textured.sum())
    static_tex = float(static[textured].mean()) if n_tex else 1.0
    # cells where the global exposure change would show, yet nothing changed at all
    strict = cells(np.abs(lowpass(m.thumb) - lowpass(ref.thumb))) < 6.0
    visible = np.abs((g - 1.0) * ref.cell_mean) > 15.0
    intact_share = float((strict & visible).mean())
    sc.update(gain=g, ratio=ratio, static=float(static.mean()), static_tex=static_tex, intact=intact_share)

    # occlusion: part of the view went flat and changed while another part is untouched. The
    # exposure gain comes from cells that kept their texture, so a large dark cover cannot pass
    # itself off as a darker exposure.
    kept = textured & (m.cell_coarse >= 0.5 * ref.cell_coarse) & (ref.cell_mean > 12.0)
    g_occ = float(np.median(m.cell_mean[kept] / ref.cell_mean[kept])) if kept.sum() >= 4 else g
    flat = m.cell_coarse < np.maximum(cfg.occlusion_flat, 0.3 * ref.cell_coarse)
    was_visible = (ref.cell_coarse >= 2.0 * cfg.occlusion_flat) | (np.abs(m.cell_mean - ref.cell_mean) > 20.0)
    changed = ~static_cells(m, ref, g_occ) & ~intact
    covered = float((changed & flat & was_visible).mean())
    untouched = float(static_cells(m, ref, g_occ).mean())
    sc.update(covered=covered, untouched=untouched, g_occ=g_occ)

    # brightness: the whole picture scaled alike (occlusion darkens only part of it)
    ok = ref.cell_mean > 12.0
    if ok.any():
        r = m.cell_mean[ok] / ref.cell_mean[ok]
        consistent = float(np.mean((r > 0.6 * g) & (r < 1.6 * g)))
    else:
        consistent = 1.0
    sc["consistent"] = consistent
    if consistent >= 0.7 and intact_share < 0.1:
        if ratio < cfg.dark_ratio and g_occ < cfg.dark_ratio:
            out.candidates["brightness"] = _sig(4.0 * (cfg.dark_ratio - ratio))
            if ratio < cfg.dark_sure:
                sc["brightness_sure"] = 1.0
        elif ratio > cfg.bright_ratio and m.mean > 150:
            out.candidates["brightness"] = _sig(ratio - cfg.bright_ratio)

    # noise: the quietest cells (where noise shows) got much noisier, or salt and pepper appeared
    q_cur = float(np.percentile(m.cell_noise, 20))
    q_ref = float(np.percentile(ref.cell_noise, 20)) * max(g, 1.0)
    nz = float(np.log((q_cur + 0.5) / (q_ref + 0.5)))
    sc.update(noise=nz, impulse=m.impulse)
    if nz > cfg.noise_log:
        out.candidates["noise"] = _sig(2.0 * (nz - cfg.noise_log))
    elif m.impulse > max(cfg.impulse_share, 5.0 * ref.impulse):
        out.candidates["noise"] = _sig(m.impulse / cfg.impulse_share - 1.0)

    if covered >= cfg.occlusion_share and (untouched >= 0.05 or covered >= 0.85):
        out.candidates["occlusion"] = _sig(5.0 * (covered - cfg.occlusion_share))

    # shift: the textured scene no longer lines up with the reference, but a displaced copy does
    sharp_enough = float(np.median(m.cell_coarse)) >= 0.5 * g * float(np.median(ref.cell_coarse))
    if covered < cfg.occlusion_share and sharp_enough and n_tex:
        (dx, dy), resp = cv2.phaseCorrelate(g * ref.thumb, m.thumb.copy(), _WINDOW)
        disp = float(np.hypot(dx / THUMB_W, dy / THUMB_H))
        sc.update(dx=dx, dy=dy, resp=resp, disp=disp)
        if disp >= cfg.shift_px and resp >= cfg.shift_response:
            move = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
            warped = np.asarray(cv2.warpAffine(ref.thumb, move, (THUMB_W, THUMB_H),
                                               borderMode=cv2.BORDER_REPLICATE), dtype=np.float32)
            inside = _inside(dx, dy) & textured
            if inside.sum() >= 4:
                lp = lowpass(m.thumb)
                before = float(cells(np.abs(lp - g * lowpass(ref.thumb)))[inside].mean())
                after = float(cells(np.abs(lp - g * lowpass(warped)))[inside].mean())
                gainr = after / max(before, 1e-3)
                sc.update(realign=gainr, misalign=before)
                if gainr < cfg.shift_realign and before > 6.0:
                    out.candidates["shift"] = _sig(3.0 * (cfg.shift_realign - gainr) + disp)
                    if gainr < 0.5 * cfg.shift_realign:
                        sc["shift_strong"] = 1.0
        if "shift" not in out.candidates and static_tex < cfg.shift_static_share:
            out.candidates["shift"] = 0.6  # no clean displacement (rotation): needs confirming

    # blur: fine detail dropped where the coarse scene is unchanged (strictly: a re-pointed or
    # busy scene also changes fine detail, but then the coarse content moves too)
    lp = lowpass(m.thumb)
    d_sharp = cells(np.abs(lp - g * lowpass(ref.thumb)))
    d_soft = cells(np.abs(lp - g * cv2.GaussianBlur(ref.thumb, (0, 0), 2.8)))
    still_coarse = np.minimum(d_sharp, d_soft) < 3.0 + 0.08 * g * ref.cell_coarse
    use = still_coarse & (ref.cell_fine >= 3.0) & (ref.cell_count >= 3)
    n_use = int(use.sum())
    sc["blur_cells"] = float(n_use)
    if n_use >= cfg.blur_min_cells:
        lr = np.log((m.cell_fine[use] + 0.5) / (g * ref.cell_fine[use] + 0.5))
        b = float(np.median(lr))
        sc["blur"] = b
        if b < cfg.blur_log and float(np.mean(lr < 0.0)) >= 0.8:
            out.candidates["blur"] = _sig(2.0 * (cfg.blur_log - b))
    return out
