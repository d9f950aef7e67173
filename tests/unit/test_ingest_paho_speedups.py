"""ingest/paho_speedups.py's matcher shortcut: the same matches as paho's own, no reference cycle per message."""

from __future__ import annotations

import gc

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.matcher import MQTTMatcher

from ingest import paho_speedups

pytestmark = pytest.mark.unit

TOPICS = ["ioc/v1/bts/B-1/telemetry", "ioc/v1/camera/C-1/status", "$SYS/broker/load", "", "/", "a/b/c"]
FILTERS = ["ioc/v1/+/+/telemetry", "ioc/#", "#", "+/+/+", "$SYS/#", "a/b/c", "/"]


def test_matches_are_paho_own_with_and_without_filters() -> None:
    paho_speedups.install()
    for filters in ([], FILTERS[:1], FILTERS):
        matcher = MQTTMatcher()
        for f in filters:
            matcher[f] = f
        for topic in TOPICS:
            assert list(matcher.iter_match(topic)) == list(paho_speedups._ITER_MATCH(matcher, topic)), (filters, topic)


def test_a_client_without_topic_callbacks_leaves_no_cyclic_garbage_per_message() -> None:
    paho_speedups.install()
    got: list[bytes | bytearray] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="matcher", protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.append(m.payload)
    gc.collect()
    gc.disable()
    try:
        for i in range(100):
            message = mqtt.MQTTMessage(mid=i, topic=b"ioc/v1/bts/B-1/telemetry")
            message.payload = b"{}"
            client._handle_on_message(message)
        assert gc.collect() == 0
    finally:
        gc.enable()
    assert len(got) == 100
    client.message_callback_add("ioc/v1/+/+/telemetry", lambda c, u, m: got.append(b"filtered"))
    client._handle_on_message(mqtt.MQTTMessage(mid=1, topic=b"ioc/v1/bts/B-1/telemetry"))
    assert got[-1] == b"filtered"  # topic callbacks still work
