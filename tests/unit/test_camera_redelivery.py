"""A snapshot the broker redelivers is a copy of a picture already analysed, never evidence of a frozen stream.

A snapshot's time is when it was received (a JPEG carries no stamp of ours), so the copy the broker sends
again after a reconnection, or to the next leader after a takeover, comes with a newer time and the same
bytes as the camera's last picture: exactly what a camera re-sending its last picture looks like. The
broker marks such a copy (MQTT DUP: it sent it to this session before); the analyser remembers the digests
of its recent pictures, also across a takeover (its saved state), and skips a marked copy of one of them.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import paho.mqtt.client as mqtt
import pytest

from analytics.camera.state import dumps, loads
from ingest.contract import topic_for
from ingest.records import ParsedMessage, Snapshot
from ioc import camera_shards
from ioc.analytics_stage import SNAPSHOTS_REPEATED, AnalyticsStage
from ioc.cluster.brain import BrainInput, tie_acks
from ioc.live.hub import LiveHub
from ioc.settings import Settings
from tests.unit.test_camera_analyser import T0, Road, jpeg

pytestmark = pytest.mark.unit


def _healthy(n: int = 40, seed: int = 3) -> list[tuple[datetime, bytes]]:
    road = Road(seed)
    return [(T0 + timedelta(seconds=5 * i), jpeg(road.frame(i))) for i in range(n)]


class _Feed:
    """An inline analytics stage and the health labels it reports; ``dup``: the message being handed is marked."""

    def __init__(self) -> None:
        self.stage = AnalyticsStage(LiveHub(), None, camera_processes=0)
        self.labels: list[str] = []
        self.stage.on_health = lambda dev, label, conf, ts: self.labels.append(label)
        self.dup = False
        self.stage.redelivered = lambda: self.dup

    def send(self, device: str, ts: datetime, data: bytes, dup: bool = False) -> None:
        self.dup = dup
        self.stage.on_parsed(ParsedMessage([Snapshot(device, "camera", ts, data, 640, 360)], []))


@pytest.mark.parametrize("again", [1, 2, 3], ids=["last", "last two", "last three"])
def test_snapshots_redelivered_after_a_reconnection_are_skipped(again: int) -> None:
    feed, frames = _Feed(), _healthy()
    for ts, data in frames:
        feed.send("cam-redelivered", ts, data)
    assert "freeze" not in feed.labels
    seen = len(feed.labels)
    before = SNAPSHOTS_REPEATED._value.get()
    back = frames[-1][0] + timedelta(seconds=1)  # the broker restarts; what was not acked comes again, stamped now
    for i, (_, data) in enumerate(frames[-again:]):
        feed.send("cam-redelivered", back + timedelta(milliseconds=10 * i), data, dup=True)
    assert SNAPSHOTS_REPEATED._value.get() == before + again
    assert len(feed.labels) == seen  # not analysed: no verdict at all, let alone "freeze"
    road = Road(3)
    for i in range(40, 44):  # the camera goes on as before: ok
        feed.send("cam-redelivered", frames[-1][0] + timedelta(seconds=5 * (i - 39)), jpeg(road.frame(i)))
    assert "freeze" not in feed.labels, feed.labels


def test_a_camera_repeating_its_last_picture_is_still_frozen() -> None:
    """Unmarked, the same bytes again are the camera's own: a stalled stream, judged frozen at once."""
    feed, frames = _Feed(), _healthy()
    for ts, data in frames:
        feed.send("cam-stalled", ts, data)
    feed.send("cam-stalled", frames[-1][0] + timedelta(seconds=5), frames[-1][1])
    assert feed.labels[-1] == "freeze", feed.labels[-3:]


def test_a_marked_picture_never_analysed_is_analysed() -> None:
    """A leader killed before analysing a snapshot leaves it to the next one, marked: it is news to that one."""
    feed, frames = _Feed(), _healthy()
    for ts, data in frames[:-1]:
        feed.send("cam-news", ts, data)
    seen = len(feed.labels)
    feed.send("cam-news", frames[-1][0], frames[-1][1], dup=True)
    assert len(feed.labels) == seen + 1 and feed.labels[-1] == "ok"


def test_an_older_picture_again_is_skipped_even_unmarked() -> None:
    """A picture from before the camera's last one is a replay whatever the flag says (a camera never goes back)."""
    feed, frames = _Feed(), _healthy()
    for ts, data in frames:
        feed.send("cam-older", ts, data)
    seen = len(feed.labels)
    feed.send("cam-older", frames[-1][0] + timedelta(seconds=1), frames[-3][1])
    assert len(feed.labels) == seen


def test_after_a_takeover_the_restored_analyser_skips_the_redelivered_copy() -> None:
    """The next leader restores the camera's saved analyser, then gets the killed leader's unacked snapshot."""
    device = "cam-takeover-redelivery"
    frames = _healthy()
    from analytics.camera import CameraAnalyser

    first = CameraAnalyser(device)
    for ts, data in frames:
        assert first.analyse(data, ts).label == "ok"
    assert camera_shards.import_states([(device, dumps(first))]) == 1  # the standby's shard, in this process
    try:
        again = frames[-1][0] + timedelta(seconds=30)
        assert camera_shards.analyse(device, frames[-1][1], again, redelivered=True) is None
        assert camera_shards.analyse(device, frames[-2][1], again, redelivered=True) is None
        result = camera_shards.analyse(device, jpeg(Road(3).frame(40)), again + timedelta(seconds=5))
        assert result is not None and result[0] == "ok", result
    finally:
        camera_shards._analysers.pop(device, None)
        camera_shards._unsaved.discard(device)
    # the memory of recent pictures is part of the saved state
    restored = loads(dumps(first))
    assert restored.replayed(frames[-1][1], redelivered=True)
    assert not restored.replayed(frames[-1][1], redelivered=False)


def test_the_brain_input_tells_the_stage_a_message_is_marked_as_redelivered() -> None:
    feed, frames = _Feed(), _healthy()
    settings = Settings(database_url="postgresql://nobody@127.0.0.1:9/none", mqtt_url="mqtt://127.0.0.1:9")
    brain_input = tie_acks(BrainInput(settings, (feed.stage.on_parsed,)), feed.stage, None)
    topic = topic_for("camera", "cam-brain", "snapshot").encode()

    def deliver(data: bytes, dup: bool) -> None:
        msg = mqtt.MQTTMessage(mid=1, topic=topic)
        msg.payload, msg.qos, msg.dup = data, 1, dup
        brain_input._on_message(msg, 1)

    for _, data in frames:
        deliver(data, dup=False)
    seen = len(feed.labels)
    deliver(frames[-1][1], dup=True)  # the broker's copy after a reconnection
    assert len(feed.labels) == seen
    deliver(frames[-1][1], dup=False)  # the camera itself sending the same picture again
    assert feed.labels[-1] == "freeze"
