"""Feed the hub straight from the broker when ingest runs in other processes.

A plain (non-shared), clean, QoS 0 subscription: every API process sees every message, holds no
session at the broker, and never acknowledges anything on behalf of the ingest workers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from ingest.contract import SUBSCRIPTION
from ingest.mqtt_session import MqttSession, SessionOptions
from ingest.parse import parse_message
from ingest.records import ParsedMessage
from ioc.settings import Settings


class LiveListener:
    """Parses messages from the broker and hands them to the sinks (hub, analytics)."""

    def __init__(self, settings: Settings, sinks: tuple[Callable[[ParsedMessage], None], ...]) -> None:
        self.sinks = sinks
        user, password = settings.mqtt_credentials
        self.session = MqttSession(SessionOptions(
            host=settings.mqtt_host, port=settings.mqtt_port, client_id=f"ioc-live-{uuid.uuid4().hex[:8]}",
            subscriptions=(SUBSCRIPTION,), qos=0, clean_start=True, session_expiry_s=0,
            keepalive_s=settings.mqtt.keepalive_s, username=user, password=password,
            tls=settings.mqtt_tls), self._on_message)

    def _on_message(self, message: mqtt.MQTTMessage, generation: int) -> None:
        payload = message.payload if isinstance(message.payload, bytes) else bytes(message.payload)
        parsed = parse_message(message._topic.decode("utf-8", "replace"), payload, datetime.now(UTC),
                               retained=bool(message.retain))
        for sink in self.sinks:
            sink(parsed)

    async def run(self) -> None:
        await self.session.run()

    async def stop(self) -> None:
        await self.session.stop()
