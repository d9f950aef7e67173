"""Per-snapshot measurements: decode a JPEG at reduced size and compute cheap grayscale features.

Everything here is stateless; the analyser compares these measurements with what it has learned
about the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

THUMB_W, THUMB_H = 96, 72
GRID_X, GRID_Y = 12, 9  # 8x8-pixel cells on the thumbnail
WORK_MAX_W = 352
PROBE_STEP = 4  # sparse full-detail pixels kept to see temporal sensor noise
_REDUCED = {
    1: cv2.IMREAD_GRAYSCALE,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
# Immerkaer's noise kernel: cancels locally planar image structure, keeps noise.
_NOISE_K = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(buf: bytes) -> tuple[int, int] | None:
    """Return (width, height) from a JPEG's SOF header without decoding, or None."""
    i, n = 2, len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    while i + 9 < n:
        if buf[i] != 0xFF:
            i += 1
            continue
        m = buf[i + 1]
        if m in _SOF:
            return (buf[i + 7] << 8) | buf[i + 8], (buf[i + 5] << 8) | buf[i + 6]
        if m == 0xFF:
            i += 1
            continue
        if m == 0x01 or 0xD0 <= m <= 0xD8:
            i += 2
            continue
        i += 2 + ((buf[i + 2] << 8) | buf[i + 3])
    return None


def decode_work(buf: bytes) -> U8 | None:
    """Decode a JPEG to grayscale, reduced by 1/2/4/8 in the DCT so the width is at most ~352 px.

    Returns None if the bytes do not decode.
    """
    size = jpeg_size(buf)
    f = 1
    if size is not None:
        while size[0] / f > WORK_MAX_W and f < 8:
            f *= 2
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), _REDUCED[f])
    if img is None or img.size == 0 or img.shape[0] < GRID_Y * 2 or img.shape[1] < GRID_X * 2:
        return None
    if img.shape[1] > 2 * WORK_MAX_W:  # header not parsed: shrink after the fact
        h = max(GRID_Y * 2, img.shape[0] * WORK_MAX_W // img.shape[1])
        img = cv2.resize(img, (WORK_MAX_W, h), interpolation=cv2.INTER_AREA)
    return np.asarray(img, dtype=np.uint8)


def cells(a: F32) -> F32:
    """Mean of a thumbnail-sized array over the cell grid (GRID_Y x GRID_X)."""
    return a.reshape(GRID_Y, THUMB_H // GRID_Y, GRID_X, THUMB_W // GRID_X).mean(axis=(1, 3), dtype=np.float32)


@dataclass(slots=True)
class Measures:
    """Measurements of one snapshot.

    Attributes:
        thumb: 96x72 float32 grayscale thumbnail.
        probe: sparse pixels of the working image (every 4th row/column), uint8.
        mean: mean grey level.
        contrast: standard deviation of the thumbnail.
        cell_mean: per-cell mean grey level.
        cell_coarse: per-cell mean gradient magnitude on the thumbnail (coarse structure).
        cell_fine: per-cell mean |Laplacian| at working resolution (fine detail, focus).
        cell_noise: per-cell mean |Immerkaer residual| at working resolution.
        impulse: share of isolated extreme pixels (salt and pepper).
    """

    thumb: F32
    probe: U8
    mean: float
    contrast: float
    cell_mean: F32
    cell_coarse: F32
    cell_fine: F32
    cell_noise: F32
    impulse: float


def measure(work: U8) -> Measures:
    """Compute all per-snapshot measurements from the working-size grayscale image."""
    thumb = cv2.resize(work, (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA).astype(np.float32)
    gx = cv2.Sobel(thumb, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(thumb, cv2.CV_32F, 0, 1, ksize=3)
    coarse = np.asarray(cv2.magnitude(gx, gy), dtype=np.float32)
    lap = cv2.convertScaleAbs(cv2.Laplacian(work, cv2.CV_16S, ksize=1))
    res = cv2.convertScaleAbs(cv2.filter2D(work, cv2.CV_16S, _NOISE_K))
    grid = (GRID_X, GRID_Y)
    fine = np.asarray(cv2.resize(lap.astype(np.float32), grid, interpolation=cv2.INTER_AREA), dtype=np.float32)
    noise = np.asarray(cv2.resize(res.astype(np.float32), grid, interpolation=cv2.INTER_AREA), dtype=np.float32)
    med = cv2.medianBlur(work, 3)
    impulse = float(np.count_nonzero(cv2.absdiff(work, med) > 70)) / work.size
    return Measures(
        thumb=thumb,
        probe=np.ascontiguousarray(work[2::PROBE_STEP, 2::PROBE_STEP]),
        mean=float(thumb.mean()),
        contrast=float(thumb.std()),
        cell_mean=cells(thumb),
        cell_coarse=cells(coarse),
        cell_fine=fine,
        cell_noise=noise,
        impulse=impulse,
    )
