"""The saved position of a partition (ioc/partition/replay.py): what a replay learns again and what it skips."""

from __future__ import annotations

from types import SimpleNamespace

import orjson
import pytest

from ioc.partition.replay import Position, start_config

pytestmark = pytest.mark.unit


def test_the_floor_waits_for_devices_not_saved_yet() -> None:
    pos = Position()
    pos.applied(1, 10, ["a", "b"])
    pos.applied(11, 20, ["a"])
    doc, done = pos.save(["a"], still_dirty=lambda d: d == "b")  # a periodic pass: b's slot has not come
    assert doc is not None and orjson.loads(doc) == {"floor": 0, "saved": {"a": 20}}
    assert pos.floor == 0, "nothing moves before the commit"
    done()
    assert not pos.learns("a", 15) and pos.learns("b", 15) and pos.learns("a", 21)
    pos.applied(21, 30, ["a"])
    doc, done = pos.save(["a", "b"], still_dirty=lambda d: False)  # a hand-over: everything
    done()
    assert orjson.loads(doc or b"") == {"floor": 30, "saved": {}}
    assert not pos.learns("b", 30) and pos.learns("b", 31)


def test_a_restored_position_skips_what_each_device_saved() -> None:
    pos = Position.load(orjson.dumps({"floor": 5, "saved": {"a": 9}}), has_rows=True)
    assert not pos.legacy and pos.hi == 5
    assert [pos.learns("a", s) for s in (5, 9, 10)] == [False, False, True]
    assert [pos.learns("b", s) for s in (5, 6)] == [False, True]
    assert not pos.fresh(5) and pos.fresh(6)
    doc, _ = pos.save([], still_dirty=lambda d: False)
    assert doc is None, "nothing moved: nothing written"


def test_rows_without_a_position_are_an_older_versions() -> None:
    pos = Position.load(None, has_rows=True)
    assert pos.legacy and pos.learns("a", 1)
    assert start_config(pos, SimpleNamespace(num_ack_pending=3, ack_floor=SimpleNamespace(stream_seq=9)), 10.0)[0] \
        is False, "its consumer's acknowledgements are the position"
    doc, _ = pos.save([], still_dirty=lambda d: False)
    assert doc is not None, "the first save writes a position"


def test_the_consumer_starts_again_after_the_floor_when_its_acks_passed_it() -> None:
    pos = Position(floor=7)
    info = SimpleNamespace(num_ack_pending=0, ack_floor=SimpleNamespace(stream_seq=12))
    stale, config = start_config(pos, info, 10.0)
    assert stale and config.opt_start_seq == 8
    info = SimpleNamespace(num_ack_pending=0, ack_floor=SimpleNamespace(stream_seq=7))
    assert not start_config(pos, info, 10.0)[0], "acknowledged exactly what was saved"
    info = SimpleNamespace(num_ack_pending=2, ack_floor=SimpleNamespace(stream_seq=5))
    assert start_config(pos, info, 10.0)[0], "messages in flight to a previous owner"
    assert not start_config(pos, None, 10.0)[0] and start_config(Position(), None, 10.0)[1].opt_start_seq is None
