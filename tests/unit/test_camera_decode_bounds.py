"""Camera decoding is bounded: a header claiming a huge picture is refused before any decode."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from analytics.camera import CameraAnalyser, features
from analytics.camera.features import ImageTooLarge, decode_work
from ingest import contract
from ingest.parse import jpeg_size
from ingest.records import ParsedMessage, Snapshot
from ioc.analytics_stage import SNAPSHOTS_REFUSED, SNAPSHOTS_REPEATED, AnalyticsStage
from ioc.live.hub import LiveHub
from tests.unit.test_camera_analyser import T0, Road, jpeg

pytestmark = pytest.mark.unit


def claiming(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its frame header (SOF) rewritten to claim ``width`` x ``height`` pixels."""
    size = jpeg_size(data)
    assert size is not None
    buf = bytearray(data)
    pos = 2
    while not (0xC0 <= buf[pos + 1] <= 0xCF and buf[pos + 1] not in (0xC4, 0xC8, 0xCC)):
        pos += 2 + int.from_bytes(buf[pos + 2:pos + 4], "big")
    buf[pos + 5:pos + 7] = height.to_bytes(2, "big")
    buf[pos + 7:pos + 9] = width.to_bytes(2, "big")
    out = bytes(buf)
    assert jpeg_size(out) == (width, height)
    return out


def small_jpeg() -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((64, 64), 128, np.uint8))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize(("width", "height"), [(30000, 30000), (contract.MAX_IMAGE_WIDTH + 1, 16),
                                               (16, contract.MAX_IMAGE_HEIGHT + 1), (8000, 8000)])
def test_a_header_beyond_the_caps_is_refused_before_decoding(width: int, height: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = claiming(small_jpeg(), width, height)
    assert len(bomb) < 4096

    def no_decode(*args: object) -> None:
        raise AssertionError("decoded")  # the real decode takes seconds and gigabytes

    monkeypatch.setattr(features.cv2, "imdecode", no_decode)
    with pytest.raises(ImageTooLarge, match=f"{width}x{height}"):
        decode_work(bomb)


def test_a_large_allowed_picture_decodes_reduced() -> None:
    big = cv2.resize(Road(3).frame(0), (4096, 2304), interpolation=cv2.INTER_LINEAR)
    dec = decode_work(jpeg(big))
    assert dec is not None
    img, reduction, _ = dec
    assert reduction == 8 and img.shape == (2304 // 8, 4096 // 8)


def test_ordinary_snapshots_decode_as_before() -> None:
    img, reduction, _ = decode_work(jpeg(Road(3).frame(0))) or (None, 0, 0)
    assert img is not None and reduction == 2 and img.shape == (180, 320)
    assert decode_work(b"not a jpeg at all") is None


def test_the_stage_counts_a_refused_snapshot_and_reports_no_health() -> None:
    stage = AnalyticsStage(LiveHub(), None, camera_processes=0)
    health: list[str] = []
    stage.on_health = lambda dev, label, conf, ts: health.append(label)
    before = SNAPSHOTS_REFUSED._value.get()
    bomb = claiming(jpeg(Road(3).frame(0)), 30000, 30000)
    stage.on_parsed(ParsedMessage([Snapshot("cam-bomb", "camera", T0, bomb, 30000, 30000)], []))
    assert health == [] and SNAPSHOTS_REFUSED._value.get() == before + 1
    stage.on_parsed(ParsedMessage([Snapshot("cam-bomb", "camera", T0, jpeg(Road(3).frame(1)), 640, 360)], []))
    assert health == ["ok"]


def test_a_redelivered_snapshot_is_not_analysed_again() -> None:
    """At-least-once input: the same snapshot twice (same time, same bytes) is one picture, not a frozen stream."""
    stage = AnalyticsStage(LiveHub(), None, camera_processes=0)
    health: list[str] = []
    stage.on_health = lambda dev, label, conf, ts: health.append(label)
    road = Road(3)
    frames = [(T0 + timedelta(seconds=10 * i), jpeg(road.frame(i))) for i in range(40)]
    for ts, data in frames:
        stage.on_parsed(ParsedMessage([Snapshot("cam-again", "camera", ts, data, 640, 360)], []))
    before = SNAPSHOTS_REPEATED._value.get()
    stage.on_parsed(ParsedMessage([Snapshot("cam-again", "camera", *frames[-1], 640, 360)], []))
    assert SNAPSHOTS_REPEATED._value.get() == before + 1
    assert "freeze" not in health, health
    # The same bytes under a newer time are what a frozen camera sends: still analysed.
    stage.on_parsed(ParsedMessage([Snapshot("cam-again", "camera", frames[-1][0] + timedelta(seconds=10),
                                            frames[-1][1], 640, 360)], []))
    assert health[-1] == "freeze", health[-3:]


def test_the_analyser_raises_for_a_bomb_and_goes_on_after_it() -> None:
    an = CameraAnalyser("cam-x")
    with pytest.raises(ImageTooLarge):
        an.analyse(claiming(small_jpeg(), 30000, 30000), T0)
    assert an.analyse(jpeg(Road(3).frame(0)), T0).label == "ok"


def test_the_folder_check_labels_a_bomb_and_goes_on(tmp_path: Path) -> None:
    from analytics.camera.batch import check_dir

    road = Road(3)
    seq = tmp_path / "cam"
    seq.mkdir()
    for i in range(4):
        data = jpeg(road.frame(i))
        (seq / f"{i}.jpg").write_bytes(claiming(data, 30000, 30000) if i == 1 else data)
    out = tmp_path / "det.csv"
    assert check_dir(tmp_path, out, progress=False) == 4
    rows = list(csv.reader(out.open()))[1:]
    assert [r[1] for r in rows] == ["0", "1", "2", "3"]
    assert [r[2] for r in rows] == ["ok", "black", "ok", "ok"]


def test_the_folder_check_goes_on_past_a_snapshot_it_cannot_read(tmp_path: Path) -> None:
    """A dangling link (or a file without read permission) ended the whole check with a traceback."""
    from analytics.camera.batch import check_dir

    road = Road(3)
    seq = tmp_path / "cam"
    seq.mkdir()
    for i in (0, 2):
        (seq / f"{i}.jpg").write_bytes(jpeg(road.frame(i)))
    (seq / "1.jpg").symlink_to(tmp_path / "gone.jpg")
    other = tmp_path / "cam2"
    other.mkdir()
    (other / "0.jpg").write_bytes(jpeg(road.frame(0)))
    out = tmp_path / "det.csv"
    assert check_dir(tmp_path, out, progress=False) == 4
    rows = list(csv.reader(out.open()))[1:]
    assert [(r[0], r[1], r[2]) for r in rows] == [("cam", "0", "ok"), ("cam", "1", "black"), ("cam", "2", "ok"),
                                                  ("cam2", "0", "ok")]
