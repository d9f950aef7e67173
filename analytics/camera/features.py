"""Per-snapshot measurements: decode a JPEG at reduced size and compute cheap grayscale features.

Everything here is stateless; the analyser compares these measurements with what it has learned
about the camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from ingest import contract
from ingest.parse import jpeg_scans, jpeg_size

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

THUMB_W, THUMB_H = 96, 72
GRID_X, GRID_Y = 12, 9  # 8x8-pixel cells on the thumbnail (detail statistics)
FINE_X, FINE_Y = 24, 18  # 4x4-pixel cells on the thumbnail (where a cover is)
# Decode with the largest DCT reduction that keeps the picture at least this wide: 640x360 snapshots
# decode at half size (320x180); smaller ones in full, so defocus stays measurable.
WORK_MIN_W = 300
NOISE_CLIP = 20  # grey levels: cap of the per-pixel noise residual
NOISE_SMOOTHEST = 0.8  # share of pixels, the smoothest, the noise residual is measured on
DEFAULT_DC_Q = 8  # luminance DC quantiser step assumed when the header has none (quality ~75)
_REDUCED = {
    1: cv2.IMREAD_GRAYSCALE,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}
# Immerkaer's noise kernel: cancels locally planar image structure, keeps noise.
_NOISE_K = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
_NEIGHBOURS = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], np.float32)
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


class ImageTooLarge(ValueError):
    """The JPEG header claims more pixels than the device contract allows: refused before any decode."""


@dataclass(frozen=True, slots=True)
class JpegHeader:
    """What the JPEG header says: picture size and the luminance DC quantiser step."""

    width: int
    height: int
    dc_q: int


def quantile(a: npt.ArrayLike, q: float) -> float:
    """``np.quantile(a, q)`` (linear interpolation), without its overhead on the small arrays used here."""
    v = np.asarray(a, dtype=np.float32).ravel()
    if v.size == 0:
        return 0.0
    pos = q * (v.size - 1)
    lo = int(pos)
    hi = min(lo + 1, v.size - 1)
    part = np.partition(v, (lo, hi))
    return float(part[lo] + (pos - lo) * (part[hi] - part[lo]))


def median(a: npt.ArrayLike) -> float:
    """Median (see :func:`quantile`)."""
    return quantile(a, 0.5)


def jpeg_header(buf: bytes) -> JpegHeader | None:
    """Parse size (SOF) and luminance DC quantiser (DQT table 0) without decoding, or None."""
    i, n = 2, len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        return None
    dc_q = DEFAULT_DC_Q
    while i + 9 < n:
        if buf[i] != 0xFF:
            i += 1
            continue
        m = buf[i + 1]
        if m == 0xFF:
            i += 1
            continue
        if m in (0x00, 0x01) or 0xD0 <= m <= 0xD8:  # no length: libjpeg discards a stuffed zero and scans on
            i += 2
            continue
        length = (buf[i + 2] << 8) | buf[i + 3]
        if m == 0xDB:  # one or more quantisation tables: precision/id byte, then 64 entries
            j, end = i + 4, min(n, i + 2 + length)
            while j + 1 < end:
                precision, table = buf[j] >> 4, buf[j] & 0x0F
                if table == 0:
                    dc_q = (buf[j + 1] << 8 | buf[j + 2]) if precision and j + 2 < n else buf[j + 1]
                j += 1 + 64 * (2 if precision else 1)
        elif m in _SOF:
            return JpegHeader((buf[i + 7] << 8) | buf[i + 8], (buf[i + 5] << 8) | buf[i + 6], max(1, dc_q))
        i += 2 + length
    return None


def decode_work(buf: bytes) -> tuple[U8, int, int] | None:
    """Decode a JPEG to grayscale, reduced by 1/2/4/8 in the DCT (see ``WORK_MIN_W``).

    Returns:
        ``(image, reduction, dc_q)``, or None if the bytes do not decode.

    Raises:
        ImageTooLarge: the header claims a picture beyond the contract's caps (a few KB can claim
            30000x30000 pixels: gigabytes and seconds to decode), or it holds more scans than they allow.
    """
    head = jpeg_header(buf)
    # Both header readers (the ingest's strict one, this lenient one) must agree it is small enough.
    sizes = [s for s in (jpeg_size(buf), (head.width, head.height) if head else None) if s is not None]
    if not sizes:  # no frame header: nothing to bound the decode by, and nothing a JPEG decoder could read
        return None
    for w, h in sizes:
        if w > contract.MAX_IMAGE_WIDTH or h > contract.MAX_IMAGE_HEIGHT or w * h > contract.MAX_IMAGE_PIXELS:
            raise ImageTooLarge(f"picture claims {w}x{h} pixels; the limit is {contract.MAX_IMAGE_WIDTH}x"
                                f"{contract.MAX_IMAGE_HEIGHT} and {contract.MAX_IMAGE_PIXELS} pixels")
    scans = jpeg_scans(buf)
    if scans > contract.MAX_JPEG_SCANS:  # each scan is a pass over every block: 4 MB of them took 20 minutes
        raise ImageTooLarge(f"picture holds {scans} scans; the limit is {contract.MAX_JPEG_SCANS}")
    f = 1
    if head is not None:
        while head.width / (2 * f) >= WORK_MIN_W and f < 8:
            f *= 2
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), _REDUCED[f])
    if img is None or img.size == 0 or img.shape[0] < FINE_Y * 2 or img.shape[1] < FINE_X * 2:
        return None
    if head is None and img.shape[1] >= 4 * WORK_MIN_W:  # header not parsed: shrink after the fact
        h = max(FINE_Y * 2, img.shape[0] * 2 * WORK_MIN_W // img.shape[1])
        img = cv2.resize(img, (2 * WORK_MIN_W, h), interpolation=cv2.INTER_AREA)
        f = 0  # block grid lost
    return np.asarray(img, dtype=np.uint8), f, head.dc_q if head else DEFAULT_DC_Q


def cells(a: npt.NDArray[np.floating]) -> F32:
    """Mean of a thumbnail-sized array over the cell grid (GRID_Y x GRID_X)."""
    # an integer-factor area resize is exactly the block mean, and several times faster than numpy's
    return np.asarray(cv2.resize(a.astype(np.float32, copy=False), (GRID_X, GRID_Y),
                                 interpolation=cv2.INTER_AREA), dtype=np.float32)


def fine_cells(a: npt.NDArray[np.floating]) -> F32:
    """Mean of a thumbnail-sized array over the fine cell grid (FINE_Y x FINE_X)."""
    return np.asarray(cv2.resize(a.astype(np.float32, copy=False), (FINE_X, FINE_Y),
                                 interpolation=cv2.INTER_AREA), dtype=np.float32)


def texture(thumb: F32) -> F32:
    """Gradient magnitude of a thumbnail (Sobel, grey levels per pixel)."""
    gx = cv2.Sobel(thumb, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(thumb, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    return np.asarray(cv2.magnitude(gx, gy), dtype=np.float32)


def _grid(a: npt.NDArray[np.floating], size: tuple[int, int]) -> F32:
    """Cell means of a map, dropping the few right/bottom pixels that do not fill a whole cell."""
    # a whole number of pixels per cell keeps OpenCV on its fast integer-factor path (~5x faster)
    h, w = a.shape[0] - a.shape[0] % size[1], a.shape[1] - a.shape[1] % size[0]
    return np.asarray(cv2.resize(a[:h, :w], size, interpolation=cv2.INTER_AREA), dtype=np.float32)


@dataclass(slots=True)
class Measures:
    """Measurements of one snapshot.

    Attributes:
        thumb: 96x72 float32 grayscale thumbnail.
        blocks: mean of every 8x8 JPEG block (the DC terms), float16 (ample for a tolerance of a grey
            level); empty if the grid is unknown.
        dc_q: luminance DC quantiser step: a block mean is exact to within ``dc_q / 16`` grey levels.
        mean: mean grey level.
        contrast: standard deviation of the thumbnail.
        cell_mean: per-cell mean grey level (12x9).
        cell_tex: per-cell mean gradient magnitude of the thumbnail (12x9, coarse structure).
        fine_mean: per-fine-cell mean grey level (24x18).
        fine_tex: per-fine-cell mean gradient magnitude of the thumbnail (24x18).
        sharp: per-cell log ratio of fine to coarse gradient energy at working resolution (12x9):
            falls when the optics blur, whatever the content.
        sharp2: the same ratio one octave coarser (coarse over coarser gradient energy, 12x9).
        edge: per-cell coarse gradient energy at working resolution (12x9): how much structure
            the sharpness ratio rests on.
        cell_noise: per-cell mean |Immerkaer residual| of the smoothest pixels at working
            resolution, clipped (12x9).
        impulse: share of isolated extreme pixels (salt and pepper).
    """

    thumb: F32
    blocks: npt.NDArray[np.float16]
    dc_q: int
    mean: float
    contrast: float
    cell_mean: F32
    cell_tex: F32
    fine_mean: F32
    fine_tex: F32
    sharp: F32
    sharp2: F32
    edge: F32
    cell_noise: F32
    impulse: float

    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(getattr(self, a).nbytes for a in ("thumb", "blocks", "cell_mean", "cell_tex", "fine_mean",
                                                     "fine_tex", "sharp", "sharp2", "edge", "cell_noise"))


def block_means(work: U8, reduction: int) -> npt.NDArray[np.float16]:
    """Mean of each 8x8 JPEG block, from an image decoded at 1/``reduction`` (exact DCT DC terms)."""
    if reduction <= 0:
        return np.zeros((0, 0), np.float16)
    b = 8 // reduction
    h, w = work.shape[0] // b * b, work.shape[1] // b * b
    if b == 1:
        return work[:h, :w].astype(np.float16)
    return _grid(work[:h, :w].astype(np.float32), (w // b, h // b)).astype(np.float16)


def measure(work: U8, reduction: int = 0, dc_q: int = DEFAULT_DC_Q) -> Measures:
    """Compute all per-snapshot measurements from the working-size grayscale image."""
    thumb = np.asarray(cv2.resize(work, (THUMB_W, THUMB_H), interpolation=cv2.INTER_AREA), dtype=np.float32)
    tex = texture(thumb)
    wf = work.astype(np.float32)
    gx = cv2.Sobel(wf, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(wf, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    # coarse scale: one Gaussian pyramid level (a 5-tap blur, then every other pixel), gradients
    # per working pixel, hence the halved scale
    soft = cv2.pyrDown(wf)
    sx = cv2.Sobel(soft, cv2.CV_32F, 1, 0, ksize=3, scale=0.0625)
    sy = cv2.Sobel(soft, cv2.CV_32F, 0, 1, ksize=3, scale=0.0625)
    # coarser still: a defocus lowers every scale, rain's softening (a pixel or so) only the finest
    softer = cv2.pyrDown(soft)
    tx = cv2.Sobel(softer, cv2.CV_32F, 1, 0, ksize=3, scale=0.03125)
    ty = cv2.Sobel(softer, cv2.CV_32F, 0, 1, ksize=3, scale=0.03125)
    grid = (GRID_X, GRID_Y)
    e_px = cv2.multiply(gx, gx) + cv2.multiply(gy, gy)
    e_fine = _grid(e_px, grid)
    e_coarse = _grid(cv2.multiply(sx, sx) + cv2.multiply(sy, sy), grid)
    e_coarser = _grid(cv2.multiply(tx, tx) + cv2.multiply(ty, ty), grid)
    # Noise raises the residual of every pixel; edges, texture and sparse bright streaks (rain,
    # snowflakes, glints) raise it on a few. So it is measured on the smoothest pixels only (by
    # gradient, a share that noise cannot empty), and clipped.
    res = np.minimum(cv2.convertScaleAbs(cv2.filter2D(work, cv2.CV_16S, _NOISE_K)), NOISE_CLIP)
    sample = e_px[::4, ::4].ravel()
    k = int(NOISE_SMOOTHEST * (sample.size - 1))
    smooth = (e_px <= float(np.partition(sample, k)[k])).astype(np.float32)
    cell_noise = _grid(res.astype(np.float32) * smooth, grid) / np.maximum(_grid(smooth, grid), 0.05)
    # salt and pepper: extreme pixels with no extreme neighbour (a rain streak or a snowflake is a
    # run of them, so it does not count)
    med = cv2.medianBlur(work, 3)
    extreme = (cv2.absdiff(work, med) > 70).astype(np.uint8)
    lonely = cv2.filter2D(extreme, -1, _NEIGHBOURS, borderType=cv2.BORDER_CONSTANT) == 0
    impulse = float(np.count_nonzero(extreme.view(bool) & lonely)) / work.size
    return Measures(
        thumb=thumb,
        blocks=block_means(work, reduction),
        dc_q=dc_q,
        mean=float(thumb.mean()),
        contrast=float(thumb.std()),
        cell_mean=cells(thumb),
        cell_tex=cells(tex),
        fine_mean=fine_cells(thumb),
        fine_tex=fine_cells(tex),
        sharp=np.log((e_fine + 0.05) / (e_coarse + 0.05)).astype(np.float32),
        sharp2=np.log((e_coarse + 0.05) / (e_coarser + 0.05)).astype(np.float32),
        edge=e_coarse,
        cell_noise=cell_noise.astype(np.float32),
        impulse=impulse,
    )
