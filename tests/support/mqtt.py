"""Publishing helpers for tests: a QoS 1 publisher that knows when the broker has every message."""

from __future__ import annotations

import time
import uuid

import orjson
import paho.mqtt.client as mqtt


def unique_id(prefix: str = "t") -> str:
    """A device id no other test uses (tests never wipe the database)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class Publisher:
    """A paho publisher on its own network thread."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=unique_id("pub"), protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, port)
        self.client.loop_start()
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes | str | dict[str, object] | list[object], qos: int = 1,
                retain: bool = False) -> None:
        if isinstance(payload, dict | list):
            payload = orjson.dumps(payload)
        self.infos.append(self.client.publish(topic, payload, qos=qos, retain=retain))

    def wait_all(self, timeout: float = 60.0) -> None:
        """Block until the broker acknowledged every publish."""
        deadline = time.monotonic() + timeout
        for info in self.infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise TimeoutError("broker did not acknowledge all publishes")
        self.infos.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
