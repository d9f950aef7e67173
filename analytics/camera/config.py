"""Thresholds of the camera analyser, in one place.

The defaults are what the live pipeline and the batch checker use. Most are relative (to the
learned reference, to the JPEG quantiser, to the camera's own score spread), which is what lets one
set of values serve very different scenes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """Tunable thresholds of :class:`~analytics.camera.analyser.CameraAnalyser`.

    Log thresholds are natural logarithms of ratios against the learned reference; texture is in
    grey levels per thumbnail pixel.
    """

    # learning
    warmup: int = 6  # snapshots learned before any relative check (absolute checks run from the first)
    warm_fit: float = 0.6  # ... and the share of cells the reference must explain once
    steady_level: float = 8.0  # a pixel changing less than this since the last snapshot is background
    alpha_pixel: float = 0.05  # settled learning rate of the background thumbnail
    alpha_cell: float = 0.1  # settled learning rate of per-cell detail statistics
    exposure_follow: float = 0.5  # share of an exposure change the background takes on per update
    spread_k: float = 4.0  # a relative score alarms beyond this many of the camera's mean deviations
    spread_warmup: int = 6  # healthy snapshots seen before a spread-relative check may alarm
    min_cells: int = 6  # cells a per-cell median needs
    # black / video loss: near-uniform frame
    black_contrast: float = 3.0  # thumbnail grey-level std
    black_layout: float = 0.5  # correlation with the reference's cell layout above which it is the scene, dimmed
    overlay_cells: float = 0.15  # burnt-in text left out of the uniform-screen test covers at most this share
    # freeze
    still_margin: float = 1.0  # grey levels a block mean may move beyond the JPEG quantiser's rounding
    still_flicker: int = 2  # a snapshot moving no more blocks so is no evidence that the camera's scene lives
    still_level: float = 8.0  # (no block grid) grey levels a thumbnail pixel must move to count as change
    still_pixels: int = 2  # (no block grid) changed thumbnail pixels tolerated in a still snapshot
    freeze_history: int = 6  # moving snapshots seen before a single still one can be a freeze
    freeze_busy: int = 12  # a camera whose quietest snapshots change this many blocks is frozen when still
    freeze_quiet: int = 8  # a camera whose quietest snapshots change fewer blocks needs one more still snapshot
    freeze_short: int = 2  # otherwise a still spell of at least this many snapshots ...
    freeze_chance: float = 0.02  # ... (on a quiet camera, one that chance makes this unlikely) ...
    freeze_spell_factor: float = 2.0  # ... and this many times its longest healthy still spell
    # burnt-in overlay (a ticking clock): blocks left out of the stillness test
    overlay_learn: int = 3  # snapshots compared before an overlay is looked for
    overlay_memory: int = 16  # the block change rate is a running mean, then an EMA over about this many
    overlay_rate: float = 0.4  # a block changing at least this often may be a clock digit ...
    overlay_box: float = 0.03  # ... in a box of at most this share of the blocks ...
    overlay_ring: float = 0.3  # ... whose surrounding blocks change at most this often on average
    overlay_global: float = 0.25  # snapshots changing more than this share of blocks are not learned from
    overlay_busy: float = 0.3  # on a camera with this share of such snapshots, a small change recurring in
    # one place during a quiet stretch is taken for the clock too (its rates may not know it)
    # brightness
    exposure_alpha: float = 0.2  # learning rate of the recent exposure a brightness step is measured from
    dark_ratio: float = 0.55
    dark_sure: float = 0.5  # darker than this, alike everywhere, in one step, is reported at once
    dark_step: float = 0.8  # ... "in one step": the snapshot before was at least this bright
    brightness_confirm: int = 2  # auto-exposure swings (a white lorry) last one snapshot
    bright_ratio: float = 1.9
    brightness_structure: float = 0.5  # share of its structure (beyond the gain) a dimmed scene keeps
    # noise
    noise_log: float = 0.5  # median log ratio of the cell noise residual to its reference
    noise_sure: float = 2.0  # beyond this many times the threshold: reported at once
    noise_step: float = 0.8  # ... and risen by this many times the threshold above its recent level
    noise_recent_alpha: float = 0.3  # learning rate of that recent level (snapshots with no noise candidate)
    shift_sure_px: float = 0.04  # a shift reported at once also moved this far (wind shake moves less)
    impulse_share: float = 0.004  # share of salt-and-pepper pixels
    # occlusion
    occlusion_flat: float = 0.4  # texture below which a cell shows no structure
    occlusion_lost: float = 0.35  # ... or below this share of its reference texture
    occlusion_level: float = 15.0  # grey levels a flat cell must change by
    occlusion_share: float = 0.12  # share of fine cells covered
    occlusion_alone: float = 0.4  # ... needs no untouched part of the view left beside it
    occlusion_sure: float = 0.45  # ... reported at once (the same cells flat two snapshots running otherwise)
    occlusion_confirm: int = 2
    occlusion_rim_share: float = 0.3  # a cover smaller than this ...
    occlusion_edge: float = 0.5  # ... must show at least this share of the reference's contour on its rim
    occlusion_overlap: float = 0.5  # share of a tracked cover's cells that must stay covered (a car moves on)
    cover_rate_alpha: float = 0.25  # learning rate of how often each cell looks covered
    # shift (re-pointing)
    shift_px: float = 0.015  # displacement, share of the picture size
    shift_search_drop: float = 0.08  # search for a displacement once the in-place match drops this much
    shift_gain: float = 0.25  # the moved reference must raise the median cell correlation this much
    shift_sure: float = 0.4  # ... this much: reported at once
    shift_match: float = 0.35  # and reach at least this correlation
    shift_rotate_drop: float = 0.15  # try rotations when the match is this far below the usual (twice, in place)
    shift_confirm: int = 2
    jitter_alpha: float = 0.05  # learning rate of the camera's wind-shake level (mean square displacement)
    jitter_px: float = 0.6  # thumbnail px (rms): a camera shaking more needs one more agreeing snapshot
    jitter_learn: float = 0.4  # thumbnail px (rms): the reference's detail statistics learn through the shake
    jitter_sure: float = 4.0  # a shift reported at once moved this many times the shake level
    shift_mismatch: float = 0.35  # in-place match this far below the usual: the scene changed ...
    shift_steady: float = 0.5  # ... and stayed changed if consecutive snapshots match this well
    # blur
    blur_log: float = 0.35  # drop in the median log sharpness ratio (at least)
    blur_edge: float = 0.6  # coarse gradient energy a cell needs to take part
    blur_sure: float = 1.6  # beyond this many times the threshold: reported at once
    blur_confirm: int = 2
    blur_shape: float = 1.5  # a drop within this many times the threshold is marginal ...
    blur_coarse: float = 0.7  # ... and must show at the next octave too, beyond this share of the threshold,
    blur_alike: float = 0.9  # ... or in this share of the cells (70% otherwise)
    caption_exact: float = 0.1  # cells this close to the reference's sharpness at both octaves ...
    caption_rows: int = 2  # ... on at most this many of the 9 cell rows are burnt-in text, left out of blur
    # activity
    motion_level: float = 12.0  # grey levels between consecutive thumbnails
    object_level: float = 25.0  # grey levels from the background
    object_min_px: int = 6  # thumbnail pixels
