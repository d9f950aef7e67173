"""Feed the hub straight from the broker when ingest runs in other processes.

A plain (non-shared), clean, QoS 0 subscription: every API process sees every message, holds no
session at the broker, and never acknowledges anything on behalf of the ingest workers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import paho.mqtt.client as mqtt

from ingest.contract import SUBSCRIPTION
from ingest.device_rate import DeviceRate
from ingest.guard import MetricNameGuard
from ingest.handling import handle_message
from ingest.kinds import DeviceKinds
from ingest.mqtt_session import MqttSession, SessionOptions
from ingest.records import ParsedMessage
from ioc.live.intake import LiveIntake
from ioc.settings import Settings

#: Messages read off the socket per turn of the event loop. Reading only queues them (ioc/live/intake.py), a
#: few tens of microseconds each; handling them is budgeted in time by the intake, so sends still run every
#: ~10 ms however large the backlog.
PACKETS_PER_TURN = 500


class LiveListener:
    """Parses messages from the broker and hands them to the sinks (hub, analytics)."""

    def __init__(self, settings: Settings, sinks: tuple[Callable[[ParsedMessage], None], ...],
                 late_sinks: tuple[Callable[[ParsedMessage], None], ...] | None = None) -> None:
        self.sinks = sinks
        # messages the intake set aside as late (the newest of a device, once caught up): the hub's own
        # ``on_parsed_late`` on a served replica; by default the same sinks
        self.late_sinks = sinks if late_sinks is None else late_sinks
        self.guard = MetricNameGuard()
        self.rate = DeviceRate(settings.ingest.device_bytes_per_s, settings.ingest.device_burst_bytes)
        self.kinds = DeviceKinds()  # the registry's kinds, kept current by ``kinds.run`` (the app starts it)
        user, password = settings.mqtt_credentials
        self.session = MqttSession(SessionOptions(
            host=settings.mqtt_host, port=settings.mqtt_port, client_id=f"ioc-live-{uuid.uuid4().hex[:8]}",
            subscriptions=(SUBSCRIPTION,), qos=0, clean_start=True, session_expiry_s=0,
            keepalive_s=settings.mqtt.keepalive_s, username=user, password=password,
            tls=settings.mqtt_tls, packets_per_turn=PACKETS_PER_TURN), self._on_message, self._on_connection_change)
        self.intake = LiveIntake(self._handle, shed_after_s=settings.live.shed_after_ms / 1000)
        self.stall_s = settings.ingest.stall_s
        self._disconnected_at: float | None = time.monotonic()

    def _on_connection_change(self, connected: bool) -> None:
        self._disconnected_at = None if connected else (self._disconnected_at or time.monotonic())

    def health_problems(self) -> list[str]:
        """The live listener is healthy while its broker link is up (it holds no queue of its own)."""
        refused = ", ".join(self.session.refused_subscriptions)
        if refused:
            return [f"live listener: the broker refused the subscription ({refused})"]
        down = self._disconnected_at
        if down is not None and time.monotonic() - down > self.stall_s:
            return [f"live listener: MQTT broker link down for {time.monotonic() - down:.0f} s (screens, "
                    "detectors and alerts get nothing)"]
        return []

    def _on_message(self, message: mqtt.MQTTMessage, generation: int) -> None:
        self.intake.push(message)

    def _handle(self, message: mqtt.MQTTMessage, late: bool) -> None:
        # The ingest's own handler: parse, caps, sinks, each error caught (the ingest workers quarantine the
        # message; here it is only counted and logged, since this process stores nothing).
        handle_message(message, datetime.now(UTC), self.guard, self.late_sinks if late else self.sinks, stores=False,
                       kinds=self.kinds, rate=self.rate)

    async def run(self) -> None:
        watch = asyncio.create_task(self.intake.watch())  # sees stalls of the loop (ioc/live/backlog.py)
        try:
            await self.session.run()
        finally:
            watch.cancel()

    async def stop(self) -> None:
        await self.session.stop()
