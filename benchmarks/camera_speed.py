"""Camera analyser speed (snapshots/s, one process and a 2-process pool) and memory per camera.

    nice -n 19 python benchmarks/camera_speed.py [--snapshots 600] [--cameras 8]

Uses synthetic 640x360 road JPEGs with moving vehicles; end to end from bytes to findings.
"""

from __future__ import annotations

import argparse
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np

from analytics.camera import CameraAnalyser

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n snapshots (640x360, quality 80-95) of a textured road with moving vehicles."""
    rng = np.random.default_rng(seed)
    bg = cv2.GaussianBlur(rng.integers(40, 200, (360, 640, 3), np.uint8), (0, 0), 3)
    out = []
    for t in range(n):
        img = bg.copy()
        for k in range(5):
            x = int((k * 150 + 37 * t * (1 + k % 2)) % 760) - 60
            cv2.rectangle(img, (x, 120 + 40 * k), (x + 80, 150 + 40 * k), (30 * k, 200 - 30 * k, 90), -1)
        noise = np.empty(img.shape, np.int16)
        cv2.randn(noise, 0, 3)
        img = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(80 + t % 16)])
        out.append(buf.tobytes())
    return out


_FRAMES: list[bytes] = []


def _init(n: int) -> None:
    """Pool initialiser: each worker makes its own snapshots, so no bytes cross processes."""
    _FRAMES[:] = make_jpegs(n)


def analyse_camera(cam: str) -> int:
    """Run one camera's snapshots through its own analyser; returns the findings count."""
    an = CameraAnalyser(cam)
    return sum(len(an.analyse(b, T0 + timedelta(seconds=5 * i)).findings) for i, b in enumerate(_FRAMES))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--snapshots", type=int, default=600, help="per camera")
    ap.add_argument("--cameras", type=int, default=8)
    args = ap.parse_args()
    _init(args.snapshots)
    frames = _FRAMES
    jobs = [f"cam-{k}" for k in range(args.cameras)]
    total = args.snapshots * args.cameras

    analyse_camera(jobs[0])  # warm up imports and caches
    t = time.perf_counter()
    for j in jobs:
        analyse_camera(j)
    single = total / (time.perf_counter() - t)
    print(f"single process : {single:7.0f} snapshots/s  ({1000 / single:.2f} ms each)")

    with ProcessPoolExecutor(max_workers=2, initializer=_init, initargs=(args.snapshots,)) as pool:
        list(pool.map(analyse_camera, jobs[:2]))  # start the workers
        t = time.perf_counter()
        list(pool.map(analyse_camera, jobs))
        pooled = total / (time.perf_counter() - t)
    print(f"2-process pool : {pooled:7.0f} snapshots/s")

    an = CameraAnalyser("cam-mem")
    for i, b in enumerate(frames[:50]):
        an.analyse(b, T0 + timedelta(seconds=5 * i))
    print(f"memory/camera  : {an.memory_bytes() / 1024:.1f} KiB arrays, "
          f"{len(pickle.dumps(an.state_dict())) / 1024:.1f} KiB pickled state")


if __name__ == "__main__":
    main()
