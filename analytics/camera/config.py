"""Thresholds of the camera analyser, in one place.

The defaults are what the live pipeline and the batch checker use; they were tuned on generated
sequences from several seeds and checked on seeds not used for tuning.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CameraConfig:
    """Tunable thresholds of :class:`~analytics.camera.analyser.CameraAnalyser`.

    Ratios are against what the analyser has learned for the camera; log thresholds are natural
    logarithms of such ratios.
    """

    # learning
    warmup: int = 6  # snapshots learned before any relative check (absolute checks run from the first)
    steady_level: float = 8.0  # a pixel changing less than this since the last snapshot is background
    alpha_pixel: float = 0.05  # settled learning rate of the background thumbnail
    alpha_cell: float = 0.1  # settled learning rate of per-cell detail statistics
    # black / video loss: near-uniform frame
    black_contrast: float = 3.0  # thumbnail grey-level std
        # freeze
    still_level: float = 8.0  # grey levels a thumbnail pixel must move to count as change
    still_pixels: int = 2  # changed pixels tolerated in a "still" snapshot (JPEG re-encoding noise)
    freeze_history: int = 8  # moving snapshots needed before a single still one can be a freeze
    freeze_busy_z: float = 2.5  # how far above zero (in log-activity spreads) a busy scene sits
    freeze_long: int = 12  # still snapshots that are a freeze on a camera with no still history
    freeze_short: int = 4  # ... the floor once it has shown a few healthy still spells
    freeze_spell_factor: float = 3.0  # ... times the longest healthy still spell
    # brightness
    dark_ratio: float = 0.55
    dark_sure: float = 0.3  # darker than this is reported at once; milder drops need confirming
    brightness_confirm: int = 2  # auto-exposure swings (a white lorry) last one snapshot
    bright_ratio: float = 1.9
    # noise
    noise_log: float = 0.8  # log ratio of the low-quantile cell noise to its reference
    impulse_share: float = 0.004  # share of salt-and-pepper pixels
    # occlusion
    occlusion_flat: float = 3.0  # thumbnail gradient below which a cell shows no structure
    occlusion_share: float = 0.18  # share of cells covered (flat and changed)
    occlusion_confirm: int = 2  # consecutive snapshots
    # shift (re-pointing)
    shift_px: float = 0.018  # phase-correlation displacement, share of the thumbnail size
    shift_response: float = 0.08  # minimum phase-correlation peak
    shift_realign: float = 0.6  # displaced reference must cut the mismatch to this share
    shift_static_share: float = 0.25  # below this share of textured cells matching: re-pointed
    shift_confirm: int = 2
    # blur
    blur_log: float = -0.6  # median log ratio of fine detail over unchanged textured cells
    blur_min_cells: int = 6
    blur_confirm: int = 2
    # activity
    motion_level: float = 12.0  # grey levels between consecutive thumbnails
    object_level: float = 25.0  # grey levels from the background
    object_min_px: int = 6  # thumbnail pixels
