"""Re-pointed camera: the scene no longer lines up with the reference, but a moved copy of it does.

Both pictures are band-passed (a difference of Gaussians: exposure, defocus and fine noise drop out)
and compared cell by cell with normalised correlation, whose median over the cells that hold
structure ignores vehicles and people. Phase correlation proposes the displacement; when it does
not explain the new view, a few rotations are tried too. A shift is a displacement that makes the
scene match again far better than it matches in place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from analytics.camera.config import CameraConfig
from analytics.camera.features import F32, THUMB_H, THUMB_W, Measures, cells, median
from analytics.camera.reference import Ref, Spread

_WINDOW = cv2.createHanningWindow((THUMB_W, THUMB_H), cv2.CV_32F)
_CENTRE = ((THUMB_W - 1) / 2.0, (THUMB_H - 1) / 2.0)
_ANGLES = (-8.0, -5.0, -3.0, 3.0, 5.0, 8.0)  # degrees tried when a translation does not explain the view
_ONES = np.ones((THUMB_H, THUMB_W), np.float32)


def bandpass(a: F32) -> F32:
    """Difference of Gaussians (1 and 4 thumbnail pixels)."""
    return np.asarray(cv2.GaussianBlur(a, (0, 0), 1.0) - cv2.GaussianBlur(a, (0, 0), 4.0), dtype=np.float32)


@dataclass(slots=True)
class Alignment:
    """Best transform found from the reference to the snapshot and how well it matches."""

    c0: float  # median cell correlation in place
    c: float  # ... after the transform
    dx: float = 0.0  # thumbnail pixels
    dy: float = 0.0
    angle: float = 0.0  # degrees
    searched: bool = False  # the in-place match was poor enough to look for a displacement

    @property
    def disp(self) -> float:
        """Displacement as a share of the picture size."""
        return float(math.hypot(self.dx / THUMB_W, self.dy / THUMB_H))

    @property
    def overlap(self) -> float:
        """Share of the picture the moved reference still covers."""
        return max(0.0, 1.0 - abs(self.dx) / THUMB_W) * max(0.0, 1.0 - abs(self.dy) / THUMB_H)

    def moved(self, cfg: CameraConfig) -> bool:
        """Whether the transform is a real re-pointing rather than jitter."""
        return self.disp >= cfg.shift_px or abs(self.angle) >= 2.0

    def agrees(self, other: Alignment | None) -> bool:
        """Whether two alignments describe the same re-pointing."""
        if other is None:
            return False
        # a far re-pointing seen through wind shake wobbles by a share of its size, a near one by a pixel
        tol = max(0.8, 0.2 * math.hypot(other.dx, other.dy))
        return (abs(self.dx - other.dx) <= tol and abs(self.dy - other.dy) <= tol
                and abs(self.angle - other.angle) <= 2.5)


def _ncc(cur: F32, ref: F32, use: np.ndarray) -> float:
    """Median over the ``use`` cells of the normalised correlation of two band-passed pictures."""
    ab, aa, bb = cells(cur * ref), cells(cur * cur), cells(ref * ref)
    r = ab / np.sqrt(aa * bb + 1e-6)
    return median(r[use]) if use.any() else 0.0


def _structure(bb: F32, valid: np.ndarray | None = None) -> np.ndarray:
    """Cells whose band-passed reference holds structure worth correlating."""
    e = cells(bb * bb)
    ok = e > max(0.02, 0.25 * median(e))
    return ok if valid is None else ok & valid


def _warp(a: F32, dx: float, dy: float, angle: float) -> tuple[F32, np.ndarray]:
    """The reference moved by (dx, dy) after a rotation about the centre; and the cells still inside."""
    mat = cv2.getRotationMatrix2D(_CENTRE, angle, 1.0)
    mat[0, 2] += dx
    mat[1, 2] += dy
    out = np.asarray(cv2.warpAffine(a, mat, (THUMB_W, THUMB_H), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT), dtype=np.float32)
    inside = cv2.warpAffine(_ONES, mat, (THUMB_W, THUMB_H), flags=cv2.INTER_NEAREST, borderValue=0.0)
    return out, cells(np.asarray(inside, np.float32)) > 0.99


def align(m: Measures, ref: Ref, typical: Spread, cfg: CameraConfig) -> Alignment:
    """Find how the reference view must move to match the snapshot (identity if it need not)."""
    cur = bandpass(m.thumb)
    rb = bandpass(ref.thumb)
    use0 = _structure(rb)
    c0 = _ncc(cur, rb, use0)
    best = Alignment(c0, c0)
    if typical.n >= cfg.spread_warmup and c0 >= typical.level - max(cfg.shift_search_drop, 2.0 * typical.dev):
        return best  # the view matches in place as well as it usually does: nothing moved
    # Two proposals: the band-passed pictures, and the plain ones (a flat scene such as a car park's
    # asphalt keeps its recognisable pattern in the broad shading a band-pass drops).
    for a, b in ((rb, cur), (ref.thumb, m.thumb)):
        # copies: OpenCV windows phaseCorrelate's inputs in place
        (dx, dy), _ = cv2.phaseCorrelate(a.copy(), b.copy(), _WINDOW)
        if math.hypot(dx / THUMB_W, dy / THUMB_H) < 0.5 * cfg.shift_px:
            continue  # (practically) no displacement
        warped, inside = _warp(rb, dx, dy, 0.0)
        c = _ncc(cur, warped, _structure(warped, inside))
        if c > best.c:
            best = Alignment(c0, c, dx, dy, 0.0)
    # A rotation defeats a translation search; try a few only when the view matches badly both in
    # place and moved, which a healthy snapshot (seen through its own motion) seldom does.
    if best.c < typical.level - cfg.shift_rotate_drop and c0 < typical.level - 2 * cfg.shift_rotate_drop:
        for angle in _ANGLES:
            rot, _ = _warp(rb, 0.0, 0.0, angle)
            (dx, dy), _ = cv2.phaseCorrelate(rot, cur.copy(), _WINDOW)
            warped, inside = _warp(rb, dx, dy, angle)
            c = _ncc(cur, warped, _structure(warped, inside))
            if c > best.c:
                best = Alignment(c0, c, dx, dy, angle)
    best.searched = True
    return best


def self_match(m: Measures, prev: Measures) -> float:
    """Median cell correlation of a snapshot with the previous one (is the new view steady?)."""
    a, b = bandpass(m.thumb), bandpass(prev.thumb)
    return _ncc(a, b, _structure(b))
