"""Red-team classes on the parser, the camera decoder and the shard watch, without services.

A JPEG's cost to decode is not its size: each scan is a pass over every block of the picture, whatever few bytes
it takes, so 460 KB of repeated empty scans (a 4096x4096 header) held a camera shard for minutes. Such pictures are
refused before any decode, at the ingest and again in the decoder; whatever else makes a shard spin is stopped by
the shard watch (``ioc/camera_watch.py``).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import cv2
import numpy as np
import pytest

from analytics.camera.features import ImageTooLarge, decode_work
from ingest import contract as c
from ingest.parse import jpeg_scans, parse_message
from ingest.records import Reason, Snapshot
from ioc.camera_watch import ShardWatch

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
TOPIC = "ioc/v1/camera/cam-1/snapshot"


def _segments(buf: bytes) -> list[tuple[int, bytes]]:
    """A JPEG's segments after SOI, each scan with its entropy-coded data."""
    out, i = [], 2
    while i < len(buf):
        marker = buf[i + 1]
        if marker == 0xD9:
            break
        end = i + 2 + int.from_bytes(buf[i + 2 : i + 4], "big")
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not stuffing or a restart
            while buf[end] != 0xFF or buf[end + 1] == 0 or 0xD0 <= buf[end + 1] <= 0xD7:
                end += 1
        out.append((marker, buf[i:end]))
        i = end
    return out


def scan_bomb(scans: int, width: int = 4096, height: int = 4096) -> bytes:
    """A valid progressive JPEG of a flat picture with its last (tiny, empty) scan repeated up to ``scans``."""
    flat = np.full((height, width), 128, np.uint8)
    ok, enc = cv2.imencode(".jpg", flat, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    segs = _segments(enc.tobytes())
    own = [s for m, s in segs if m == 0xDA]
    assert len(own) <= scans
    return b"\xff\xd8" + b"".join(s for _, s in segs) + own[-1] * (scans - len(own)) + b"\xff\xd9"


def test_a_jpeg_of_many_scans_is_refused_with_its_reason_and_one_at_the_limit_is_taken() -> None:
    at, over = scan_bomb(c.MAX_JPEG_SCANS), scan_bomb(c.MAX_JPEG_SCANS + 1)
    assert jpeg_scans(at) == c.MAX_JPEG_SCANS
    taken = parse_message(TOPIC, at, NOW)
    assert not taken.rejections and isinstance(taken.records[0], Snapshot)
    refused = parse_message(TOPIC, over, NOW)
    assert not refused.records
    assert refused.rejections[0].reason is Reason.IMAGE_TOO_LARGE
    assert f"{c.MAX_JPEG_SCANS + 1} scans" in refused.rejections[0].detail
    # the decoder refuses it too (second line), before decoding anything
    with pytest.raises(ImageTooLarge, match="scans"):
        decode_work(scan_bomb(2000))
    assert decode_work(at) is not None


def test_ordinary_pictures_are_far_below_the_scan_limit() -> None:
    img = np.random.default_rng(3).integers(0, 255, (360, 640, 3), dtype=np.uint8)
    for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_OPTIMIZE, 1]):
        for pic in (img, img[:, :, 0]):
            buf = cv2.imencode(".jpg", pic, params)[1].tobytes()
            assert jpeg_scans(buf) <= 10
            assert not parse_message(TOPIC, buf, NOW).rejections


async def test_the_shard_watch_names_a_shard_busy_too_long_with_one_snapshot() -> None:
    loop = asyncio.get_running_loop()
    watch = ShardWatch(2, stuck_s=30.0, apart_s=600.0)
    first, second, other = loop.create_future(), loop.create_future(), loop.create_future()
    watch.submitted(0, "cam-a", first, now=0.0)
    watch.submitted(0, "cam-b", second, now=0.0)
    watch.submitted(1, "cam-c", other, now=0.0)
    assert watch.stuck(now=29.0) == []
    first.set_result(None)
    watch.finished(0, now=25.0)  # cam-b's turn began at 25 s, not at its submission
    other.set_result(None)
    watch.finished(1, now=1.0)
    assert watch.stuck(now=40.0) == []
    assert watch.stuck(now=56.0) == [(0, "cam-b", 31.0)]
    watch.reset(0)  # the shard's process was replaced
    assert watch.stuck(now=100.0) == []
    watch.set_apart("cam-b", now=56.0)
    assert watch.apart("cam-b", now=600.0) and not watch.apart("cam-a", now=600.0)
    assert not watch.apart("cam-b", now=657.0)
    second.cancel()
    # the stage's own jobs (saving the scenes of thousands of cameras may take long) are never judged
    # (times below the monotonic clock's: on a machine up for less than 1,000 s, fixed stamps lay ahead of it)
    saving, behind = loop.create_future(), loop.create_future()
    t0 = time.monotonic() - 1000.0
    watch.submitted(1, None, saving, now=t0)
    watch.submitted(1, "cam-c", behind, now=t0)
    assert watch.stuck(now=t0 + 1000.0) == []
    saving.set_result([])
    await asyncio.sleep(0)  # its end is noted as it comes: the camera behind it is judged from there
    assert watch.stuck(now=time.monotonic() + 29) == []
    assert [s for s, _, _ in watch.stuck(now=time.monotonic() + 31)] == [1]
    behind.cancel()


def hidden_frame(width: int, height: int, lead: bytes = b"\xff\x00") -> bytes:
    """A small real JPEG with a frame header of ``width`` x ``height`` put before its own, hidden from a walker that
    reads ``lead`` (a stuffed zero, or a marker that has no length) as a segment with a length: the decoder skips
    ``lead`` and what follows up to the next marker, then an APP1 segment that holds the small frame header, and
    reads the large one first."""
    small = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (48, 64), dtype=np.uint8))[1].tobytes()
    segs = _segments(small)
    at = next(k for k, (m, _) in enumerate(segs) if m == 0xC0)
    own = segs[at][1]
    large = bytearray(own)
    large[5:7], large[7:9] = height.to_bytes(2, "big"), width.to_bytes(2, "big")
    app1 = b"\xff\xe1" + (len(own) + 6).to_bytes(2, "big") + b"\x00\x00" + own + b"\x00\x00"
    # a walker that takes the two bytes after ``lead`` as a length lands on the small frame header inside APP1
    hide = lead + (8).to_bytes(2, "big") + app1 + bytes(large)
    before = b"".join(s for _, s in segs[:at])
    return b"\xff\xd8" + before + hide + b"".join(s for _, s in segs[at + 1 :]) + b"\xff\xd9"


@pytest.mark.parametrize("lead", [b"\xff\x00", b"\xff\x01", b"\xff\xd0", b"\xff\xff\x00"])
def test_a_frame_header_hidden_from_the_header_readers_is_refused_before_decoding(
    lead: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = hidden_frame(30000, 30000, lead)  # 3 KB; decoded, 30000x30000: 6.5 s and 1.8 GB (the small one: 64x48)
    refused = parse_message(TOPIC, bomb, NOW)
    assert not refused.records and refused.rejections[0].reason is Reason.NOT_JPEG

    def no_decode(*args: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(ImageTooLarge, match="30000x30000"):
        decode_work(bomb)


async def test_ingest_stops_reading_when_the_unacked_payloads_pass_their_byte_bound() -> None:
    """A device flooding 4 MiB snapshots while commits lag: the message bound alone (20,000) let the worker hold
    80 GB; reading now pauses at ``max_pending_bytes`` and resumes once the acks bring it under half."""
    import paho.mqtt.client as mqtt

    from ingest.config import IngestConfig
    from ingest.mqtt_session import SessionOptions
    from ingest.worker import IngestWorker
    from storage.config import StorageConfig

    opts = SessionOptions(host="127.0.0.1", port=1, client_id="t", subscriptions=("ioc/v1/#",))
    worker = IngestWorker("postgresql://unused", opts, IngestConfig(max_pending_bytes=8 << 20), StorageConfig())
    picture = cv2.imencode(".jpg", np.full((48, 64), 100, np.uint8))[1].tobytes()
    big = picture[:2] + (b"\xff\xfe\xff\xff" + b"c" * 65533) * 16 + picture[2:]  # 16 comments: 1 MiB
    for mid in range(1, 8):
        msg = mqtt.MQTTMessage(mid=mid, topic=b"ioc/v1/camera/cam-1/snapshot")
        msg.payload, msg.qos = big, 1
        worker._on_message(msg, 0)
        assert worker.session._reading, f"paused after {mid} messages of 1 MiB"
    msg = mqtt.MQTTMessage(mid=8, topic=b"ioc/v1/camera/cam-1/snapshot")
    msg.payload, msg.qos = big, 1
    worker._on_message(msg, 0)  # 8 MiB held: the socket is not read any more
    assert not worker.session._reading and worker._pending == 8
    worker._seal()
    worker._order[0].done = True  # committed: acked, the bytes are let go
    worker._ack_in_order()
    assert worker.session._reading and worker._pending == 0 and worker._pending_bytes == 0


async def test_the_shard_watch_sets_apart_a_camera_in_flight_at_two_deaths_of_its_shard() -> None:
    from concurrent.futures.process import BrokenProcessPool

    loop = asyncio.get_running_loop()
    watch = ShardWatch(1, apart_s=600.0)

    def death(now: float, *done_first: str) -> str | None:
        for cam in done_first:  # analysed before the death
            ok = loop.create_future()
            ok.set_result(None)
            watch.submitted(0, cam, ok, now=now)
        watch.submitted(0, None, loop.create_future(), now=now)  # the stage's own job: never blamed
        lost = loop.create_future()
        lost.set_exception(BrokenProcessPool("died"))
        watch.submitted(0, "cam-x", lost, now=now)
        found = watch.died(0, now=now)
        watch.reset(0)
        return found

    assert death(0.0, "cam-a") is None  # once: anyone's
    assert not watch.apart("cam-x", now=1.0)
    assert death(700.0, "cam-b") is None  # again, but more than apart_s later
    assert death(800.0) == "cam-x" and watch.apart("cam-x", now=801.0)
    assert not watch.apart("cam-a", now=801.0) and not watch.apart("cam-b", now=801.0)
