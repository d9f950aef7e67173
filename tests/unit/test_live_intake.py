"""The live replica's intake: late telemetry is set aside (newest per topic), status never is."""

from __future__ import annotations

import asyncio
import time

import paho.mqtt.client as mqtt
import pytest

from ioc.live.intake import LiveIntake

pytestmark = pytest.mark.unit


def _msg(topic: str, payload: bytes = b"{}") -> mqtt.MQTTMessage:
    message = mqtt.MQTTMessage(topic=topic.encode())
    message.payload = payload
    return message


def _queue(intake: LiveIntake, topic: str, age_s: float, payload: bytes = b"{}") -> None:
    intake.queue.append((time.monotonic() - age_s, _msg(topic, payload)))


def test_fresh_messages_are_handled_in_order() -> None:
    seen: list[bytes] = []
    intake = LiveIntake(lambda m, late: seen.append(m.payload), shed_after_s=0.15, turn_budget_s=10)
    for i in range(5):
        intake.push(_msg("ioc/v1/bts/B1/telemetry", str(i).encode()))
    intake.drain()
    assert seen == [b"0", b"1", b"2", b"3", b"4"]
    assert intake.shed == 0 and intake.handled == 5


def test_late_telemetry_is_set_aside_and_only_the_newest_per_topic_is_shown() -> None:
    seen: list[tuple[str, bytes]] = []
    late_ones: list[bytes] = []

    def handle(m: mqtt.MQTTMessage, late: bool) -> None:
        seen.append((m.topic, m.payload))
        if late:
            late_ones.append(m.payload)

    intake = LiveIntake(handle, shed_after_s=0.15, turn_budget_s=10)
    _queue(intake, "ioc/v1/bts/B1/telemetry", 2.0, b"old-1")
    _queue(intake, "ioc/v1/bts/B2/telemetry", 1.9, b"old-2")
    _queue(intake, "ioc/v1/bts/B1/telemetry", 1.5, b"newer-1")
    _queue(intake, "ioc/v1/bts/B3/status", 1.5, b"down")  # never set aside, however late
    _queue(intake, "ioc/v1/bts/B3/event", 1.4, b"alarm")
    _queue(intake, "ioc/v1/traffic/T1/telemetry", 0.0, b"fresh")
    intake.drain()
    # status and event go through in order, the fresh reading too; then the set-aside newest per topic
    assert seen[:3] == [("ioc/v1/bts/B3/status", b"down"), ("ioc/v1/bts/B3/event", b"alarm"),
                        ("ioc/v1/traffic/T1/telemetry", b"fresh")]
    assert sorted(seen[3:]) == [("ioc/v1/bts/B1/telemetry", b"newer-1"), ("ioc/v1/bts/B2/telemetry", b"old-2")]
    assert intake.shed == 3 and intake.superseded == 1 and intake.handled == 5
    assert sorted(late_ones) == [b"newer-1", b"old-2"]  # the hub shows these as device state, not readings


def test_a_fresh_message_supersedes_the_one_set_aside() -> None:
    seen: list[bytes] = []
    intake = LiveIntake(lambda m, late: seen.append(m.payload), shed_after_s=0.15, turn_budget_s=10)
    _queue(intake, "ioc/v1/camera/C1/snapshot", 1.0, b"old-picture")
    _queue(intake, "ioc/v1/camera/C1/snapshot", 0.0, b"new-picture")
    intake.drain()
    assert seen == [b"new-picture"]
    assert intake.superseded == 1 and not intake.latest_only


def test_each_turn_is_bounded_and_the_rest_waits_for_the_next() -> None:
    async def scenario() -> list[int]:
        handled_per_turn: list[int] = []
        intake = LiveIntake(lambda m, late: time.sleep(0.002), shed_after_s=60, turn_budget_s=0.01)
        for i in range(40):
            intake.push(_msg(f"ioc/v1/bts/B{i}/telemetry"))
        while intake.queue:
            before = intake.handled
            await asyncio.sleep(0)  # one turn of the loop: drain runs once
            handled_per_turn.append(intake.handled - before)
        return handled_per_turn

    turns = asyncio.run(scenario())
    assert sum(turns) == 40 and len(turns) >= 4  # 2 ms each in 10 ms turns: at most ~6 per turn
    assert max(turns) <= 8


def test_a_handler_that_raises_does_not_stop_the_queue() -> None:
    seen: list[bytes] = []

    def handle(m: mqtt.MQTTMessage, late: bool) -> None:
        if m.payload == b"bad":
            raise ValueError("boom")
        seen.append(m.payload)

    intake = LiveIntake(handle, turn_budget_s=10)
    for p in (b"a", b"bad", b"b"):
        intake.push(_msg("ioc/v1/bts/B1/telemetry", p))
    intake.drain()
    assert seen == [b"a", b"b"]


def test_a_flood_of_distinct_topics_or_large_payloads_is_bounded() -> None:
    seen: list[bytes] = []
    intake = LiveIntake(lambda m, late: seen.append(m.topic.encode()), shed_after_s=0.15, turn_budget_s=10,
                        max_set_aside=100, max_bytes=50_000)
    for i in range(1000):  # late telemetry on 1,000 distinct topics: at most 100 set aside
        _queue(intake, f"ioc/v1/bts/X{i}/telemetry", 1.0, b"x" * 10)
        intake.held_bytes += 10
    intake.drain()
    assert len(seen) == 100 and intake.overflow == 900 and intake.held_bytes == 0
    seen.clear()
    for i in range(10):  # 10 KB payloads against a 50 KB bound: the sixth and later are refused
        intake.push(_msg(f"ioc/v1/camera/C{i}/snapshot", b"p" * 10_000))
    assert len(intake.queue) == 5 and intake.held_bytes == 50_000 and intake.overflow == 905
    intake.drain()
    assert len(seen) == 5 and intake.held_bytes == 0
