"""Camera shard processes of the analytics stage: each holds the analysers (and learned scenes) of its cameras.

The functions ``shard_init`` .. ``import_states`` run in the shard's own process (spawned by
``AnalyticsStage``); the stage sends each snapshot to the shard chosen by camera id (``shard_of``), and
exports/imports the learned scenes through them, saved one row per camera (``scene_rows``, ``split_saved``).
"""

from __future__ import annotations

import logging
import signal
import zlib
from datetime import datetime
from typing import Any

from analytics.findings import Finding
from ingest.contract import MAX_IMAGE_HEIGHT, MAX_IMAGE_PIXELS, MAX_IMAGE_WIDTH

logger = logging.getLogger(__name__)

CAMERA_STATE_PREFIX = "camera:"  # one saved state per camera: shard counts may differ between runs
#: OpenCV's own check of a picture's size, made by the decoder from the header it reads itself, before decoding
#: (imgcodecs' validateInputImageSize; its defaults allow 1 G pixels). Read once, when the library loads: given to
#: the shard processes in their environment, so they refuse a picture beyond the contract's caps whatever the
#: header readers of the ingest and ``decode_work`` made of its bytes.
DECODER_LIMITS = {
    "OPENCV_IO_MAX_IMAGE_WIDTH": str(MAX_IMAGE_WIDTH),
    "OPENCV_IO_MAX_IMAGE_HEIGHT": str(MAX_IMAGE_HEIGHT),
    "OPENCV_IO_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
}


def shard_of(device_id: str, shards: int) -> int:
    """The shard that holds a camera's analyser (stable across runs with the same shard count)."""
    return zlib.crc32(device_id.encode()) % shards


def scene_rows(parts: list[list[tuple[str, bytes]]]) -> list[tuple[str, bytes]]:
    """The shards' exported scenes as ``analytics_state`` rows."""
    return [(CAMERA_STATE_PREFIX + device_id, data) for part in parts for device_id, data in part]


def split_saved(rows: list[tuple[str, bytes]], shards: int) -> list[list[tuple[str, bytes]]]:
    """Saved scene rows as (camera, scene) per shard, for ``import_states``."""
    per_shard: list[list[tuple[str, bytes]]] = [[] for _ in range(shards)]
    for name, data in rows:
        device_id = name.removeprefix(CAMERA_STATE_PREFIX)
        per_shard[shard_of(device_id, shards)].append((device_id, data))
    return per_shard

_analysers: dict[str, Any] = {}
_unsaved: set[str] = set()  # cameras analysed since their state was last exported


def shard_init() -> None:
    """Set up a shard process.

    Shards stop when the service shuts them down; a Ctrl-C reaching the whole process group must not
    kill them first (with a traceback each). OpenCV runs single-threaded: there is one shard per core
    already, and its own thread pool in every shard would only contend for the same cores.
    """
    import cv2

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)


def analyse(device_id: str, jpeg: bytes, ts: datetime, redelivered: bool = False
            ) -> tuple[str, float, float, int, list[Finding]] | None:
    """In a shard process: run this camera's analyser on one snapshot. None: a copy of a picture it analysed
    lately (``redelivered``: the broker sent it before; see ``CameraAnalyser.replayed``), not analysed again."""
    from analytics.camera.analyser import CameraAnalyser

    analyser = _analysers.get(device_id)
    if analyser is None:
        analyser = _analysers[device_id] = CameraAnalyser(device_id)
    elif analyser.replayed(jpeg, redelivered):
        return None
    res = analyser.analyse(jpeg, ts)
    _unsaved.add(device_id)
    return res.label, float(res.confidence), float(res.activity), int(res.objects), list(res.findings)


def export_states() -> list[tuple[str, bytes]]:
    """In a shard process: the learned state of every camera analysed since the last export."""
    from analytics.camera.state import dumps

    out = [(device_id, dumps(_analysers[device_id])) for device_id in sorted(_unsaved)]
    _unsaved.clear()
    return out


def import_states(items: list[tuple[str, bytes]]) -> int:
    """In a shard process: restore saved analysers of cameras this shard has not started on; returns how many."""
    from analytics.camera.state import loads

    restored = 0
    for device_id, data in items:
        if device_id in _analysers:
            continue  # already learning live: newer than anything saved
        try:
            _analysers[device_id] = loads(data)
        except ValueError as err:
            logger.warning("camera %s: saved state not restored (%s)", device_id, err)
            continue
        restored += 1
    return restored
