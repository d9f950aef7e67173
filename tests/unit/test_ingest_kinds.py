"""A device's kind is fixed once known (ingest/kinds.py): the decision per message, and at the ingest's commit."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import paho.mqtt.client as mqtt
import pytest

from ingest.guard import MetricNameGuard
from ingest.handling import handle_message
from ingest.kinds import DeviceKinds
from ingest.parse import parse_message
from ingest.records import ParsedMessage, Reason
from ioc.live.state import DeviceTable

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
TS = int(T0.timestamp() * 1000)


def _telemetry(kind: str, dev: str, metric: str = "temperature_c") -> tuple[str, bytes]:
    return f"ioc/v1/{kind}/{dev}/telemetry", orjson.dumps({"ts": TS, "metrics": {metric: 21}})


def _check(kinds: DeviceKinds, topic: str, payload: bytes) -> ParsedMessage:
    return kinds.check(parse_message(topic, payload, T0), topic, T0, payload)


def test_a_known_device_under_another_kind_is_refused_whole_and_its_own_kind_goes_on() -> None:
    kinds = DeviceKinds()
    kinds.learn({"CAM-1": "camera"})
    topic, payload = _telemetry("bts", "CAM-1")
    refused = _check(kinds, topic, payload)
    assert refused.records == []
    [rej] = refused.rejections
    assert (rej.reason, rej.topic, rej.payload) == (Reason.KIND_CONFLICT, topic, payload)
    assert rej.detail.startswith("kind_conflict: device 'CAM-1' is a camera, the message says bts")
    event = orjson.dumps({"ts": TS, "type": "door_open"})
    assert _check(kinds, "ioc/v1/traffic/CAM-1/event", event).rejections[0].reason is Reason.KIND_CONFLICT
    kept = _check(kinds, *_telemetry("camera", "CAM-1"))
    assert len(kept.records) == 1 and kept.rejections == []
    assert kinds.recheck == {"CAM-1"}  # read again from the registry at the next round (an administrator's change)


def test_a_gateway_batch_is_refused_as_one_message_its_bad_items_keep_their_own_reason() -> None:
    kinds = DeviceKinds()
    kinds.learn({"B-1": "bts"})
    payload = orjson.dumps([{"ts": TS, "metrics": {"a": 1}}, {"ts": "x", "metrics": {"a": 2}},
                            {"ts": TS + 1, "metrics": {"a": 3}}])
    parsed = _check(kinds, "ioc/v1/traffic/B-1/telemetry", payload)
    assert parsed.records == []
    assert [r.reason for r in parsed.rejections] == [Reason.BAD_TS, Reason.KIND_CONFLICT]
    assert parsed.rejections[1].payload == payload


def test_a_new_id_takes_the_kind_it_first_comes_with_and_another_kind_is_held_from_the_sinks() -> None:
    kinds = DeviceKinds()
    assert _check(kinds, *_telemetry("camera", "NEW-1")).records
    assert kinds.kind_of("NEW-1") == "camera" and "NEW-1" in kinds.provisional
    other = _check(kinds, *_telemetry("bts", "NEW-1"))
    assert other.records == [] and other.rejections[0].reason is Reason.KIND_CONFLICT
    assert other.rejections[0].held is not None  # not final: the registry decides at the ingest's commit
    assert _check(kinds, *_telemetry("camera", "NEW-1")).records
    # messages without records (refused by the parser) neither claim an id nor are checked
    assert _check(kinds, "ioc/v1/traffic/NEW-2/telemetry", b"not json").rejections[0].reason is Reason.NOT_JSON
    assert kinds.kind_of("NEW-2") is None


def test_at_commit_held_records_of_the_kind_the_registry_gave_are_stored_the_others_quarantined() -> None:
    """One batch of this process: a camera message, then a BTS message of the same new id (held); another process
    committed the id as a BTS first. The BTS message is stored after all, the camera one refused."""
    kinds = DeviceKinds()
    messages = [(T0, _check(kinds, *_telemetry("camera", "NEW-3", "fps"))),
                (T0, _check(kinds, *_telemetry("bts", "NEW-3", "battery_pct"))),
                (T0, _check(kinds, *_telemetry("bts", "NEW-3", "battery_pct")))]
    assert [len(p.records) for _, p in messages] == [1, 0, 0]
    assert kinds.claims(messages) == {"NEW-3": ("camera", T0)}
    assert kinds.settle((("telemetry", at, parsed) for at, parsed in messages), {"NEW-3": "bts"}) == 1
    assert [len(p.records) for _, p in messages] == [0, 1, 1]
    assert [len(p.rejections) for _, p in messages] == [1, 0, 0]
    [rej] = messages[0][1].rejections
    assert rej.held is None and "is a bts, the message says camera" in rej.detail
    # the registry gave it the first kind instead: the held ones are final refusals, with the registry's kind
    kinds = DeviceKinds()
    messages = [(T0, _check(kinds, *_telemetry("camera", "NEW-4", "fps"))),
                (T0, _check(kinds, *_telemetry("bts", "NEW-4", "battery_pct")))]
    assert kinds.settle((("telemetry", at, parsed) for at, parsed in messages), {"NEW-4": "camera"}) == 1
    assert messages[0][1].records and messages[1][1].rejections[0].held is None


def test_at_commit_the_registry_decides_a_new_ids_kind_and_the_losers_are_quarantined() -> None:
    kinds = DeviceKinds()
    kinds.learn({"OLD": "traffic"})
    messages = [(T0, _check(kinds, *_telemetry("camera", "RACE", "fps"))),
                (T0, _check(kinds, *_telemetry("bts", "MINE", "battery_pct"))),
                (T0, _check(kinds, *_telemetry("traffic", "OLD", "speed_kmh")))]
    assert kinds.claims(messages) == {"RACE": ("camera", T0), "MINE": ("bts", T0)}
    # another ingest process committed RACE as a BTS first: the registry answers bts for it
    registry = {"RACE": "bts", "MINE": "bts"}
    assert kinds.settle((("telemetry", at, parsed) for at, parsed in messages), registry) == 1
    race = messages[0][1]
    assert race.records == [] and race.rejections[0].reason is Reason.KIND_CONFLICT
    assert race.rejections[0].topic == "ioc/v1/camera/RACE/telemetry"
    assert orjson.loads(race.rejections[0].payload)["metrics"] == {"fps": 21}  # rebuilt from the records
    assert messages[1][1].records and messages[2][1].records
    kinds.learn(registry)  # once the transaction committed
    assert kinds.known["RACE"] == "bts" and not kinds.provisional
    assert kinds.claims(messages) == {}  # nothing left to claim: the usual batch asks the database nothing
    # settling again (a retried transaction) refuses nothing twice
    assert kinds.settle((("telemetry", at, parsed) for at, parsed in messages), registry) == 0


class _Sink:
    def __init__(self) -> None:
        self.seen: list[ParsedMessage] = []

    def __call__(self, parsed: ParsedMessage) -> None:
        self.seen.append(parsed)


def test_the_sinks_and_the_caps_never_see_a_refused_message() -> None:
    kinds, guard, sink = DeviceKinds(), MetricNameGuard(max_per_device=1), _Sink()
    kinds.learn({"CAM-9": "camera"})
    topic, payload = _telemetry("bts", "CAM-9", "battery_pct")
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    parsed = handle_message(msg, T0, guard, (sink,), stores=False, kinds=kinds)
    assert [r.reason for r in parsed.rejections] == [Reason.KIND_CONFLICT]
    assert sink.seen[0].records == []
    # the refused message did not use up the device's metric names: its own kind's metric is admitted
    topic, payload = _telemetry("camera", "CAM-9", "fps")
    msg = mqtt.MQTTMessage(topic=topic.encode())
    msg.payload = payload
    assert handle_message(msg, T0, guard, (sink,), stores=False, kinds=kinds).records


def test_the_screens_follow_a_registry_change_of_kind() -> None:
    table = DeviceTable()
    assert table.get_or_create("X", "camera").kind == "camera"
    assert table.get_or_create("X", "bts").kind == "bts"  # only the registry's kind reaches the hub
