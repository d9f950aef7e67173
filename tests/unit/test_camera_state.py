"""A camera analyser's learned scene kept as bytes across a restart (no pickle)."""

from __future__ import annotations

import io
import json
from datetime import timedelta

import numpy as np
import pytest

from analytics.camera import CameraAnalyser
from analytics.camera.state import dumps, loads
from tests.unit.test_camera_analyser import T0, Road, jpeg, warp

pytestmark = pytest.mark.unit


def learned(road: Road, n: int = 16) -> CameraAnalyser:
    an = CameraAnalyser("cam-s")
    for t in range(n):
        assert an.analyse(jpeg(road.frame(t), 80 + t % 15), T0 + timedelta(seconds=5 * t)).label == "ok"
    return an


def test_restored_analyser_continues_exactly_where_it_stopped() -> None:
    road = Road(4)
    a = learned(road)
    b = loads(dumps(a))
    assert b.device_id == "cam-s" and b.n_seen == a.n_seen
    for t in range(16, 20):
        nxt, ts = jpeg(road.frame(t)), T0 + timedelta(seconds=5 * t)
        ra, rb = a.analyse(nxt, ts), b.analyse(nxt, ts)
        assert (ra.label, ra.activity, ra.objects, ra.scores) == (rb.label, rb.activity, rb.objects, rb.scores)


def test_camera_re_pointed_while_the_service_was_down_is_reported_after_the_restart() -> None:
    road = Road(6)
    saved = dumps(learned(road))
    # Down for a while; meanwhile someone turned the camera. The restored analyser still knows the old view.
    moved = [jpeg(warp(road.frame(t), 0.14 * 640, -0.06 * 360)) for t in range(40, 44)]
    restored = loads(saved)
    labels = [restored.analyse(b, T0 + timedelta(hours=2, seconds=5 * i)).label for i, b in enumerate(moved)]
    assert "shift" in labels[:2], labels
    # Without the saved state the new view is simply learned as the camera's normal.
    fresh = CameraAnalyser("cam-s")
    assert [fresh.analyse(b, T0 + timedelta(seconds=5 * i)).label for i, b in enumerate(moved)] == ["ok"] * 4


def test_bytes_that_are_not_a_state_are_refused() -> None:
    good = dumps(learned(Road(2), 8))
    with pytest.raises(ValueError, match="not a camera analyser state"):
        loads(b"garbage")
    with pytest.raises(ValueError, match="not a camera analyser state"):
        loads(good[: len(good) // 2])
    with np.load(io.BytesIO(good)) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    for change, error in ((lambda m: m.update(version=99), "version"),
                          (lambda m: m["state"]["$d"]["ref"].update({"$o": "Popen"}), "unknown object")):
        bad = json.loads(json.dumps(meta))
        change(bad)
        buf = io.BytesIO()
        np.savez(buf, **{**arrays, "meta": np.array(json.dumps(bad))})
        with pytest.raises(ValueError, match=error):
            loads(buf.getvalue())
