"""Camera analyser speed, end to end (JPEG bytes -> findings), and memory per camera.

    nice -n 10 python benchmarks/camera_speed.py [--snapshots 400] [--cameras 8] [--shards 2] [--repeat 3]
                                                 [--clips DIR]

Synthetic 640x360 street snapshots (JPEG quality 80-95, moving vehicles, sensor noise), or with
``--clips`` real footage: the frames of each video in DIR (e.g. the camera eval kit's ``videos/``)
scaled to 640x360 and JPEG-encoded, one clip per camera in turn. Two runs:

* one process: a loop over the cameras' snapshots (the floor of what a core does);
* sharded, as ``ioc/analytics_stage.py`` runs it: one single-worker process per shard, each camera
  pinned to a shard, every snapshot submitted on its own with its bytes (so pickling and process
  hand-off are counted) and at most 32 in flight per shard.

The machine may be shared: each run is repeated and the best and median rates are printed, with the
CPU time per snapshot (which contention inflates far less than wall time).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import zlib
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

from analytics.camera import CameraAnalyser
from analytics.camera.state import dumps
from analytics.findings import Finding
from ioc.camera_shards import analyse, shard_init  # the shards' own set-up and work

T0 = datetime(2024, 1, 1, tzinfo=UTC)
W, H = 640, 360


def make_jpegs(n: int, seed: int = 0) -> list[bytes]:
    """n snapshots (640x360, quality 80-95) of a textured street with moving vehicles."""
    rng = np.random.default_rng(seed)
    bg = cv2.GaussianBlur(rng.integers(40, 200, (H, W, 3), np.uint8), (0, 0), 3)
    out = []
    for t in range(n):
        img = bg.copy()
        for k in range(5):
            x = int((k * 150 + 37 * t * (1 + k % 2)) % 760) - 60
            cv2.rectangle(img, (x, 120 + 40 * k), (x + 80, 150 + 40 * k), (30 * k, 200 - 30 * k, 90), -1)
        noisy = np.clip(img.astype(np.int16) + rng.normal(0, 3, img.shape).astype(np.int16), 0, 255)
        _, buf = cv2.imencode(".jpg", noisy.astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, int(80 + t % 16)])
        out.append(buf.tobytes())
    return out


def clip_jpegs(path: str, n: int) -> list[bytes]:
    """Up to n frames of a video file, scaled to 640x360, as JPEG (quality 80-95); the clip loops if short."""
    cap = cv2.VideoCapture(path)
    frames: list[bytes] = []
    while len(frames) < n:
        ok, img = cap.read()
        if not ok:
            break
        img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
        frames.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(80 + len(frames) % 16)])[1].tobytes())
    cap.release()
    if not frames:
        raise SystemExit(f"no frames read from {path}")
    return [frames[i % len(frames)] for i in range(n)]


def _cpu() -> float:
    return time.process_time()


def single(streams: list[list[bytes]]) -> tuple[float, float]:
    """Snapshots/s and CPU ms per snapshot of one process analysing every camera (one stream each)."""
    ans = [CameraAnalyser(f"cam-{k}") for k in range(len(streams))]
    t, c = time.perf_counter(), time.process_time()
    for i in range(len(streams[0])):
        ts = T0 + timedelta(seconds=5 * i)
        for an, frames in zip(ans, streams, strict=True):
            an.analyse(frames[i], ts)
    n = len(streams[0]) * len(streams)
    return n / (time.perf_counter() - t), 1e3 * (time.process_time() - c) / n


def sharded(streams: list[list[bytes]], pools: list[ProcessPoolExecutor], max_inflight: int = 32,
            ) -> tuple[float, float]:
    """Snapshots/s and worker CPU ms per snapshot through the shard processes."""
    ids = [f"cam-{k}-{time.perf_counter_ns()}" for k in range(len(streams))]  # fresh analysers every run
    shard_of = [zlib.crc32(c.encode()) % len(pools) for c in ids]
    inflight: list[deque[Future[tuple[str, float, float, int, list[Finding]]]]] = [deque() for _ in pools]
    cpu0 = sum(p.submit(_cpu).result() for p in pools)
    t = time.perf_counter()
    for i in range(len(streams[0])):
        ts = T0 + timedelta(seconds=5 * i)
        for cam, s, frames in zip(ids, shard_of, streams, strict=True):
            q = inflight[s]
            if len(q) >= max_inflight:
                q.popleft().result()
            q.append(pools[s].submit(analyse, cam, frames[i], ts))
    for q in inflight:
        for f in q:
            f.result()
    wall = time.perf_counter() - t
    cpu = sum(p.submit(_cpu).result() for p in pools) - cpu0
    n = len(streams[0]) * len(streams)
    return n / wall, 1e3 * cpu / n


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(frames: list[bytes], cameras: int = 200) -> tuple[float, float, float]:
    """KiB per camera: learned arrays, saved state (as the stage stores it), resident growth per analyser."""
    base = _rss()
    ans = [CameraAnalyser(f"mem-{k}") for k in range(cameras)]
    for an in ans:
        for i, b in enumerate(frames[:12]):
            an.analyse(b, T0 + timedelta(seconds=5 * i))
    rss = (_rss() - base) / cameras
    return ans[0].memory_bytes() / 1024, len(dumps(ans[0])) / 1024, rss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snapshots", type=int, default=400, help="per camera")
    ap.add_argument("--cameras", type=int, default=8)
    ap.add_argument("--shards", type=int, default=2, help="shard processes (the machine's cores)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clips", default=None, help="folder of videos: real footage instead of synthetic streets")
    args = ap.parse_args()
    if args.clips:
        paths = sorted(str(p) for p in Path(args.clips).iterdir() if p.suffix.lower() in (".avi", ".mp4", ".gif"))
        clips = [clip_jpegs(p, args.snapshots) for p in paths]
        streams = [clips[k % len(clips)] for k in range(args.cameras)]
        print(f"real footage: {len(paths)} clips ({', '.join(Path(p).name for p in paths)}), "
              f"{args.snapshots} snapshots per camera")
    else:
        streams = [make_jpegs(args.snapshots)] * args.cameras
    frames = streams[0]
    single([frames[:20]])  # warm up imports and caches

    rates = [single(streams) for _ in range(args.repeat)]
    best = max(rates)
    print(f"one process    : best {best[0]:6.0f} snapshots/s, median {statistics.median(r[0] for r in rates):6.0f}"
          f"  ({best[1]:.2f} ms CPU per snapshot)")

    ctx = get_context("spawn")  # as the live pipeline: no state inherited from the parent
    pools = [ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=shard_init)
             for _ in range(args.shards)]
    try:
        sharded([frames[:20]] * (args.shards * 2), pools)  # start the workers, import OpenCV there
        rates = [sharded(streams, pools) for _ in range(args.repeat)]
    finally:
        for p in pools:
            p.shutdown()
    best = max(rates)
    print(f"{args.shards} shard procs  : best {best[0]:6.0f} snapshots/s, median "
          f"{statistics.median(r[0] for r in rates):6.0f}  ({best[1]:.2f} ms worker CPU per snapshot, "
          f"bytes in, findings out)")

    arrays, pickled, rss = memory(frames)
    print(f"memory/camera  : {arrays:.1f} KiB learned arrays, {pickled:.1f} KiB saved state, "
          f"{rss:.1f} KiB resident growth per analyser")


if __name__ == "__main__":
    main()
