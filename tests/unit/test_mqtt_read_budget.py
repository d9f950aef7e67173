"""The MQTT session reads at most one budget of packets per turn of the event loop (ingest/mqtt_session.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from ingest.mqtt_session import MqttSession, SessionOptions

pytestmark = pytest.mark.unit


class _Backlog:
    """Stands in for paho's reader: ``left`` packets waiting, then nothing."""

    def __init__(self, left: int) -> None:
        self.left, self.read = left, 0

    def _packet_read(self) -> int:
        if not self.left:
            return int(mqtt.MQTT_ERR_AGAIN)
        self.left, self.read = self.left - 1, self.read + 1
        return int(mqtt.MQTT_ERR_SUCCESS)


async def test_a_backlog_is_read_one_budget_per_turn_so_the_loop_runs_its_other_work_between() -> None:
    session = MqttSession(SessionOptions("127.0.0.1", 1, "budget-test", ("ioc/v1/#",), packets_per_turn=10),
                          lambda message, generation: None)
    backlog = _Backlog(35)
    fake: Any = backlog
    session._client = fake
    session._sock = fake  # any object: "connected"
    session._loop = asyncio.get_running_loop()
    session._on_readable()  # the socket's reader
    assert backlog.read == 10
    session._on_readable()  # the reader fires again in the same turn (the socket still holds data)
    assert backlog.read == 10  # one budget per turn: the read queued for the next turn does the rest
    await asyncio.sleep(0)
    assert backlog.read == 20
    for _ in range(3):
        await asyncio.sleep(0)
    assert backlog.read == 35 and backlog.left == 0
    session._on_readable()  # drained: nothing is queued, the next readiness reads again
    assert not session._again
