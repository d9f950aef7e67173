"""Evidence for each fault: compares one snapshot's measures with the camera's learned reference.

All functions are pure. Every comparison is relative (to the reference, to the exposure gain, to
the camera's own score spread), so the same thresholds hold on a bright textured street and on a
dim, nearly flat car park.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from analytics.camera.config import CameraConfig
from analytics.camera.features import (
    F32,
    FINE_X,
    FINE_Y,
    GRID_X,
    GRID_Y,
    Measures,
    cells,
    median,
    quantile,
    texture,
)
from analytics.camera.reference import Ref, Spread, lowpass

Mask = np.ndarray


@dataclass(slots=True)
class Comparison:
    """Fault candidates (name -> confidence) and the raw scores behind them."""

    candidates: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    strong: set[str] = field(default_factory=set)  # candidates that need no confirmation


def sig(x: float) -> float:
    """Map a margin (0 = at threshold) to a confidence in 0.5..1."""
    return float(0.5 + 0.5 * np.tanh(max(x, 0.0)))


def gain(m: Measures, ref: Ref) -> float:
    """Global exposure gain of the snapshot against the reference (median of cell ratios)."""
    ok = ref.cell_mean > 12.0
    if int(ok.sum()) >= 10:
        return median(m.cell_mean[ok] / ref.cell_mean[ok])
    return m.mean / max(ref.mean, 1.0)


def match_cells(m: Measures, ref: Ref, g: float, lp: F32 | None = None) -> Mask:
    """Cells whose low-passed content matches the gain-adjusted reference background."""
    lp = lowpass(m.thumb) if lp is None else lp
    d = cells(np.abs(lp - g * ref.lp))
    return d < 5.0 + 2.0 * g * ref.cell_tex


def overlay_cells(m: Measures, zone: Mask | None, cfg: CameraConfig) -> Mask | None:
    """Fine cells holding burnt-in text: the learned clock, and textured cells on a few lines.

    A recorder keeps stamping its clock and the camera's name on a lost picture, so a blue or black
    screen is not uniform there. Text sits on one or two lines (captions); a scene's structure, or
    lamps at night, spreads over many. None when there is no such text.
    """
    out = m.fine_tex >= 1.0
    if zone is not None:
        out |= cv2.resize(zone.astype(np.float32), (FINE_X, FINE_Y), interpolation=cv2.INTER_AREA) > 0
    n = int(np.count_nonzero(out))
    if n == 0 or n > cfg.overlay_cells * out.size or int(np.count_nonzero(out.any(axis=1))) > 4:
        return None
    return out


def black(m: Measures, ref: Ref | None, cfg: CameraConfig, zone: Mask | None = None) -> float:
    """Confidence that the snapshot is a uniform video-loss screen (0 if not).

    ``zone``: JPEG blocks of a learned burnt-in clock (see :meth:`FreezeTracker.overlay`); with
    them (or a caption that stayed exactly as in the reference) the screen is judged without those cells.
    """
    thr = cfg.black_contrast if ref is None else min(cfg.black_contrast, 0.25 * ref.contrast)
    # the gradient of residual noise on a flat screen stays small; scenes have far more structure
    tex_max = 0.5 if ref is None else max(0.5, 0.1 * float(ref.cell_tex.mean()))
    contrast, tex = m.contrast, float(m.cell_tex.mean())
    text = None
    if contrast >= thr or tex >= tex_max:
        text = overlay_cells(m, zone, cfg)
        if text is None:
            return 0.0
        rest = ~cv2.dilate(text.astype(np.uint8), _TEXT_RIM).astype(bool)
        if int(np.count_nonzero(rest)) < 0.5 * rest.size:
            return 0.0
        contrast, tex = float(m.fine_mean[rest].std()), float(m.fine_tex[rest].mean())
        if contrast >= thr or tex >= tex_max:
            return 0.0
    if ref is not None and float(ref.cell_mean.std()) >= 3.0:
        # the scene's own layout, only very dim (a lighting failure), is not a lost signal
        if text is None:
            a, b = m.cell_mean - m.cell_mean.mean(), ref.cell_mean - ref.cell_mean.mean()
        else:
            a, b = m.fine_mean[rest], ref.fine_mean[rest]
            a, b = a - a.mean(), b - b.mean()
        if float((a * b).sum()) >= cfg.black_layout * float(np.sqrt((a * a).sum() * (b * b).sum())) + 1e-6:
            return 0.0
    return sig(2.0 * (1.0 - contrast / thr))


_TEXT_RIM = np.ones((3, 3), np.uint8)  # text glyphs spill a little into the neighbouring cells


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


def compare(m: Measures, ref: Ref, cfg: CameraConfig, spreads: dict[str, Spread], covered: Mask | None = None,
            g_scene: float | None = None, exposure: float = 1.0, noise_recent: float = 0.0,
            noise_q: float = 0.0) -> Comparison:
    """Evidence for brightness, noise and blur against the reference.

    Args:
        covered: fine cells that look covered, left out of the focus and noise checks (a cover's
            own texture and grain say nothing about either).
        g_scene: exposure gain of the uncovered scene (see :func:`cover_map`); the global gain
            otherwise.
        exposure: the gain healthy snapshots have shown lately; a brightness failure is a step
            away from it (dusk is a drift, which the reference and this level follow).
        noise_recent: the noise score of recent snapshots; heavy noise is a step away from it.
        noise_q: how much more grain this snapshot's finer JPEG quantiser lets through than usual
            (log ratio, learned per camera); subtracted from the noise score.
    """
    out = Comparison()
    sc = out.scores
    g = gain(m, ref)
    gs = g if g_scene is None else g_scene
    ratio = m.mean / max(ref.mean, 1.0)
    lp = lowpass(m.thumb)
    # wind shake moves the view a pixel or two: content within that reach of where it was is unchanged
    off = np.maximum(np.maximum(lp - gs * cv2.dilate(ref.lp, _REACH), gs * cv2.erode(ref.lp, _REACH) - lp), 0.0)
    near = cells(off) < 3.0
    static = match_cells(m, ref, gs, lp) | match_cells(m, ref, 1.0, lp) | near
    if covered is not None:
        static &= ~(covered.reshape(GRID_Y, 2, GRID_X, 2).any(axis=(1, 3)))
    sc.update(gain=g, ratio=ratio, static=float(static.mean()))
    _brightness(m, ref, cfg, g, ratio, lp, out, max(exposure, 0.05))
    _noise(m, ref, cfg, gs, static, spreads["noise"], out, noise_recent, noise_q)
    _blur(m, ref, cfg, gs, lp, static, spreads["blur"], out, near)
    return out


_REACH = np.ones((5, 5), np.uint8)  # thumbnail pixels: 2 either way, about 2% of the picture


def _brightness(m: Measures, ref: Ref, cfg: CameraConfig, g: float, ratio: float, lp: F32,
                out: Comparison, exposure: float) -> None:
    """The whole picture darker or brighter alike (a cover or a passing lorry changes only part)."""
    sc = out.scores
    ok = ref.cell_mean > 12.0
    if ok.any():
        r = m.cell_mean[ok] / ref.cell_mean[ok]
        consistent = float(np.mean((r > 0.6 * g) & (r < 1.6 * g)))
    else:
        consistent = 1.0
    # cells where such an exposure change would show, yet nothing changed at all
    strict = cells(np.abs(lp - ref.lp)) < 6.0
    visible = np.abs((g - 1.0) * ref.cell_mean) > 15.0
    intact = float((strict & visible).mean())
    # a dimmed scene keeps its structure, scaled like its grey levels; a cover wipes it out
    strong_tex = ref.cell_tex >= max(0.5, quantile(ref.cell_tex, 0.75))
    kept = 1.0
    if strong_tex.any():
        kept = median(m.cell_tex[strong_tex] / ref.cell_tex[strong_tex]) / max(g, 0.05)
    sc.update(consistent=consistent, intact=intact, tex_kept=kept)
    if consistent < 0.7 or intact >= 0.1 or kept < cfg.brightness_structure:
        return
    step, g_step = ratio / exposure, g / exposure
    sc["step"] = step
    if step < cfg.dark_ratio and g_step < cfg.dark_ratio:
        out.candidates["brightness"] = sig(4.0 * (cfg.dark_ratio - step))
        if step < cfg.dark_sure and consistent >= 0.85:
            out.strong.add("brightness")
    elif step > cfg.bright_ratio and m.mean > 150:
        out.candidates["brightness"] = sig(step - cfg.bright_ratio)


def _noise(m: Measures, ref: Ref, cfg: CameraConfig, g: float, static: Mask, spread: Spread,
           out: Comparison, recent: float, q_offset: float = 0.0) -> None:
    """Fine residual risen alike in the unchanged cells, in one step from its recent level (``recent``),
    or salt and pepper appearing."""
    sc = out.scores
    use = static & (ref.cell_count >= 2)
    sc["impulse"] = m.impulse
    if int(use.sum()) >= cfg.min_cells:
        lr = np.log((m.cell_noise[use] + 1.0) / (max(g, 1.0) * ref.cell_noise[use] + 1.0))
        # a finer quantiser (a higher JPEG quality this snapshot) keeps grain a coarser one erased
        nz = median(lr) - q_offset
        thr = max(cfg.noise_log, spread.level + cfg.spread_k * spread.dev)
        sc.update(noise=nz, noise_thr=thr)
        # ... in one step: dusk raises the sensor gain, and its grain, a little with every snapshot
        step = nz - recent >= cfg.noise_step * thr
        if spread.n >= cfg.spread_warmup and nz > thr and step and float(np.mean(lr > 0.5 * thr)) >= 0.7:
            out.candidates["noise"] = sig(2.0 * (nz - thr))
            if nz - recent > cfg.noise_sure * thr:
                out.strong.add("noise")
            return
    if m.impulse > max(cfg.impulse_share, 5.0 * ref.impulse):
        out.candidates["noise"] = sig(m.impulse / cfg.impulse_share - 1.0)
        out.strong.add("noise")


def cover_map(m: Measures, ref: Ref, cfg: CameraConfig) -> tuple[Mask, dict[str, float]]:
    """Fine cells that look covered: they lost their structure, or are flat and changed grey level.

    The exposure gain comes from cells that kept their structure, so a large dark cover cannot pass
    itself off as a darker exposure. Returns the map and its scores (covered share, untouched share).
    """
    kept = (m.fine_tex >= 0.5 * ref.fine_tex) & (ref.fine_tex >= 2.0 * cfg.occlusion_flat) & (ref.fine_mean > 12.0)
    g = median(m.fine_mean[kept] / ref.fine_mean[kept]) if kept.sum() >= 8 else gain(m, ref)
    flat = m.fine_tex < np.maximum(cfg.occlusion_flat, cfg.occlusion_lost * ref.fine_tex)
    # lost structure counts only if flatter than the scene's usual flat parts: a car leaving the
    # reference's view uncovers road as textured as the rest of the road, a cover is smoother
    floor = max(cfg.occlusion_flat, quantile(ref.fine_tex, 0.25))
    lost = flat & (m.fine_tex < floor) & (ref.fine_tex >= 2.0 * cfg.occlusion_flat)
    dm = np.abs(m.fine_mean - g * ref.fine_mean)
    shifted = (m.fine_tex < 1.5 * cfg.occlusion_flat) & (dm > np.maximum(cfg.occlusion_level, 0.25 * g * ref.fine_mean))
    covered = (lost & (dm > 0.5 * cfg.occlusion_level)) | shifted
    untouched = float(((dm < 8.0 + 0.15 * g * ref.fine_mean) & ~flat).mean())
    return covered, {"covered": float(covered.mean()), "untouched": untouched, "g_occ": g}


def cover_edge(m: Measures, ref: Ref, mask: Mask) -> float:
    """How much more contour the rim of a covered region shows now than in the reference.

    A cover brings its own outline; a reference that wrongly held a since-departed car sees the
    outline vanish instead, and an exposure change moves no outline at all. Returns the ratio of
    the snapshot's to the reference's mean gradient along the rim (1 = unchanged).
    """
    up = cv2.resize(mask.astype(np.uint8), (m.thumb.shape[1], m.thumb.shape[0]), interpolation=cv2.INTER_NEAREST)
    rim = (cv2.dilate(up, _RIM_OUT) > 0) & (up == 0)
    if not rim.any():
        return 1.0
    cur = float(texture(m.thumb)[rim].mean())
    old = float(texture(ref.thumb)[rim].mean())
    return (cur + 0.5) / (old + 0.5)


_RIM_OUT = np.ones((9, 9), np.uint8)


def _blur(m: Measures, ref: Ref, cfg: CameraConfig, g: float, lp: F32, static: Mask, spread: Spread,
          out: Comparison, near: Mask | None = None) -> None:
    """Sharpness (fine over coarse gradient energy) dropped where the coarse content is unchanged.

    The ratio is a property of the optics, not of the content: a passing car changes how much
    structure a cell holds, not how sharp it is.
    """
    sc = out.scores
    d_sharp = cells(np.abs(lp - g * ref.lp))
    d_soft = cells(np.abs(lp - g * cv2.GaussianBlur(ref.thumb, (0, 0), 2.8)))
    still_coarse = np.minimum(d_sharp, d_soft) < 3.0 + 0.6 * g * ref.cell_tex
    if near is not None:
        still_coarse |= near  # (moved by the wind, not changed)
    structure = ref.edge >= max(cfg.blur_edge, median(ref.edge))
    use = still_coarse & static & structure & (ref.cell_count >= 3)
    n_use = int(use.sum())
    sc["blur_cells"] = float(n_use)
    if n_use < cfg.min_cells:
        return
    lr = m.sharp[use] - ref.sharp[use]
    lr2 = m.sharp2[use] - ref.sharp2[use] if getattr(ref, "sharp2", None) is not None else None
    thr = min(-cfg.blur_log, spread.level - cfg.spread_k * spread.dev)
    b, agree = median(lr), float(np.mean(lr < 0.5 * thr))
    if lr2 is not None and (b >= thr or agree < 0.7):
        keep = _caption(lr, lr2, use, cfg)
        if keep is not None and median(lr[~keep]) < thr and float(np.mean(lr[~keep] < 0.5 * thr)) >= 0.7:
            # the scene lost its sharpness around a caption that kept it: judged without the caption
            lr, lr2 = lr[~keep], lr2[~keep]
            b, agree = median(lr), float(np.mean(lr < 0.5 * thr))
            sc["blur_caption"] = float(np.count_nonzero(keep))
    sc.update(blur=b, blur_thr=thr, blur_agree=agree)
    warming = spread.n < cfg.spread_warmup
    if warming and not (b < cfg.blur_sure * thr and agree >= 0.7):
        return  # first learn how much this camera's sharpness wanders (codecs, exposure swings)
    if b < thr and (warming or "blur_caption" in sc or cfg.blur_shape * thr < b) and lr2 is not None:
        # a marginal drop must have a defocus's shape: the next octave lost detail too, or the
        # finest scale lost it alike everywhere (rain softens the finest scale only, and its
        # streaks, redrawn every snapshot, keep some cells sharp). While the camera's own spread
        # is unknown, or with a caption left out, even a large drop must show at the next octave.
        b2 = sc["blur2"] = median(lr2)
        if b2 > cfg.blur_coarse * thr and (warming or "blur_caption" in sc or agree < cfg.blur_alike):
            return
    if b < thr and agree >= 0.7:
        out.candidates["blur"] = sig(2.0 * (thr - b) / max(-thr, 0.1))
        if b < cfg.blur_sure * thr and not warming:
            out.strong.add("blur")


def _caption(lr: np.ndarray, lr2: np.ndarray, use: Mask, cfg: CameraConfig) -> np.ndarray | None:
    """Cells (of the ``use`` cells judged) of burnt-in text: exactly as sharp as the reference, in
    runs along a line or two.

    A caption (date, time, camera name) is drawn on the picture after the lens, so a defocus leaves
    its cells exactly as sharp, at both octaves, while the scene around softens; on a plain view (an
    asphalt car park) it can hold most of the structured cells and keep their median sharp. Text runs
    along one or two lines, over neighbouring cells; a scene's unchanged spots are scattered. None
    when there are no such cells, or too few others would be left.
    """
    grid = np.zeros(use.shape, bool)
    grid[use] = (np.abs(lr) < cfg.caption_exact) & (np.abs(lr2) < cfg.caption_exact)
    run = np.zeros(use.shape, bool)  # with a neighbour along the line that kept its sharpness too
    run[:, 1:] |= grid[:, 1:] & grid[:, :-1]
    run[:, :-1] |= grid[:, :-1] & grid[:, 1:]
    keep = run[use]
    n_keep = int(np.count_nonzero(keep))
    if n_keep < 2 or int(np.count_nonzero(run.any(axis=1))) > cfg.caption_rows or lr.size - n_keep < cfg.min_cells:
        return None
    return keep
