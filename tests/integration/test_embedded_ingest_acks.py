"""Embedded-ingest mode acks as the brain's own session does (real Mosquitto and PostgreSQL).

``ioc serve --ingest`` and the demo run the ingest worker inside the API process, feeding the brain's stages
without a brain session. Its acks used to follow the readings' commit alone, and the stages never heard of the
MQTT DUP flag: a copy of a camera's last picture sent again after a reconnection read as a frozen stream, and a
signal dropped at the alert queue's bound was acked and never stored. The worker's ack gate
(ioc/cluster/embedded.py) gives both what ``tie_acks`` gives the brain's session. The app runs in this process
(its lifespan, as ``ioc serve --ingest`` runs it) on a private broker: the shared one carries other tests'
traffic, which this worker would also read.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import paho.mqtt.client as mqtt
import pytest

from ingest.config import IngestConfig, MqttConfig
from ingest.contract import topic_for
from ioc.alerts.config import AlertsConfig
from ioc.analytics_stage import SNAPSHOTS_REPEATED
from ioc.api.app import create_app
from ioc.live.config import AnalyticsConfig
from ioc.settings import Settings
from tests.conftest import own_database
from tests.support.mqtt import Publisher, unique_id
from tests.support.services import private_mosquitto
from tests.support.tasks import until
from tests.unit.test_camera_analyser import Road, jpeg

pytestmark = pytest.mark.integration
#: The waits here poll every 20 ms (short states: a picture in flight, the reconnection).
until_soon = functools.partial(until, every=0.02)


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """This module's own database: the alarms below leave open alerts that later tests' incidents would join."""
    yield from own_database()


def embedded_settings(database_url: str, port: int) -> Settings:
    return Settings(database_url=database_url, mqtt_url=f"mqtt://127.0.0.1:{port}",
                    mqtt=MqttConfig(client_id=unique_id("embedded"), session_expiry_s=60, reconnect_min_s=0.2),
                    ingest=IngestConfig(batch_max_delay_ms=10), analytics=AnalyticsConfig(camera_processes=1),
                    alerts=AlertsConfig(tick_s=0.2))


async def leading(app: Any) -> None:
    await app.state.worker.ready.wait()
    await app.state.worker.session.wait_connected(30)
    await until_soon(lambda: app.state.alerts is not None and app.state.alerts.loaded, 20, "the brain leading")


def drop_link(session: Any) -> None:
    """The network drops the worker's connection (no DISCONNECT: as a broker restart or a cut cable)."""
    session._sock._sock.shutdown(socket.SHUT_RDWR)


async def test_a_snapshot_redelivered_after_a_reconnection_is_not_judged_frozen(database_url: str) -> None:
    """A camera's last picture is read and analysed, but not acked (its commit waits behind a table lock) when
    the link drops; on the new connection the broker sends it again, marked DUP. The camera stage takes it as the
    copy it is (skipped, counted as repeated), not as the camera sending the same picture again ("freeze")."""
    device = unique_id("cam-embedded")
    topic = topic_for("camera", device, "snapshot")
    road = Road(3)
    frames = [jpeg(road.frame(i)) for i in range(40)]
    with private_mosquitto() as port:
        app = create_app(embedded_settings(database_url, port), embed_ingest=True)
        pub = Publisher(port)
        async with app.router.lifespan_context(app):
            await leading(app)
            worker, hub = app.state.worker, app.state.hub
            labels: list[str] = []
            set_health = hub.set_health

            def record(device_id: str, health: dict[str, Any]) -> None:
                if device_id == device:
                    labels.append(health["label"])
                set_health(device_id, health)

            hub.set_health = record
            for i, data in enumerate(frames):  # one at a time: the shard takes at most 32 in flight
                pub.publish(topic, data)
                await until_soon(lambda i=i: len(labels) > i, 10, f"picture {i} analysed")  # type: ignore[misc]
            assert "freeze" not in labels, labels
            await until_soon(lambda: worker._pending == 0, 10, "every picture acked")
            conn = await asyncpg.connect(database_url)
            try:
                async with conn.transaction():
                    await conn.execute("LOCK TABLE snapshots IN SHARE MODE")  # commits of snapshots wait
                    repeated = SNAPSHOTS_REPEATED._value.get()
                    last = jpeg(road.frame(40))
                    pub.publish(topic, last)
                    await until_soon(lambda: len(labels) == len(frames) + 1, 10, "the last picture analysed")
                    assert labels[-1] == "ok"
                    generation = worker.session.generation
                    drop_link(worker.session)
                    await until_soon(lambda: worker.session.generation > generation, 10, "the worker reconnected")
                    await until_soon(lambda: SNAPSHOTS_REPEATED._value.get() > repeated
                                     or len(labels) > len(frames) + 1, 10, "the copy sent again handled")
                    await asyncio.sleep(0.3)  # a verdict on the copy would come now
                    assert labels[len(frames) + 1:] == [], "the redelivered copy was analysed as a new picture"
                    assert SNAPSHOTS_REPEATED._value.get() == repeated + 1
            finally:
                await conn.close()
            await until_soon(lambda: worker._pending == 0, 10, "the picture and its copy acked")
            pub.publish(topic, jpeg(road.frame(41)))  # the camera goes on: judged as before
            await until_soon(lambda: len(labels) == len(frames) + 2, 10, "the next picture analysed")
            assert labels[-1] == "ok", labels[-3:]
        pub.close()


def alarms(tag: str, count: int) -> list[tuple[str, bytes]]:
    ts = datetime.now(UTC).isoformat()
    return [(f"ioc/v1/bts/BTS-{tag}-{i}/event",
             orjson.dumps({"ts": ts, "type": "mains_power_lost", "severity": "major", "detail": {}}))
            for i in range(count)]


async def stored_alerts(database_url: str, tag: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT device_id, count(*) AS n FROM alerts WHERE device_id LIKE $1 "
                                "GROUP BY device_id", f"BTS-{tag}-%")
    finally:
        await conn.close()
    return {r["device_id"]: r["n"] for r in rows}


async def test_alarms_dropped_at_the_alert_queue_bound_come_again_and_are_stored(database_url: str) -> None:
    """With the alert queue's bound at 5 signals and its step held, alarms past the bound are dropped; none of
    them is acked: once the step runs, the worker reconnects, the broker sends them again, and all 12 are
    stored, every message acked: the same session has nothing left at the broker."""
    tag = uuid.uuid4().hex[:8]
    count = 12
    with private_mosquitto() as port:
        settings = embedded_settings(database_url, port)
        app = create_app(settings, embed_ingest=True)
        pub = Publisher(port)
        async with app.router.lifespan_context(app):
            await leading(app)
            worker, stage = app.state.worker, app.state.alerts
            stage.hold_signals, stage.max_signals = 1_000, 5  # no pause before the bound: it drops
            async with stage._lock:  # the step waits: the signals pile up
                for topic, payload in alarms(tag, count):
                    pub.publish(topic, payload)
                pub.wait_all()
                await until_soon(lambda: stage.dropped > 0, 10, "a signal dropped at the bound")
                await asyncio.sleep(0.5)
            deadline = time.monotonic() + 20
            while len(stored := await stored_alerts(database_url, tag)) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert len(stored) == count, f"{count - len(stored)} alarms not stored"
            assert set(stored.values()) == {1}
            await until_soon(lambda: worker._pending == 0 and stage.lost_after is None, 10, "every message acked")
            assert worker.gate.redeliveries >= 1
        pub.close()
        assert left_at_broker(port, settings.mqtt.client_id) == []


def left_at_broker(port: int, client_id: str) -> list[str]:
    """Topics the broker still holds unacked for the session ``client_id`` (taken over, read for a second)."""
    got: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, msg: got.append(msg.topic)
    client.connect("127.0.0.1", port, clean_start=False)
    client.loop_start()
    time.sleep(1.0)
    client.disconnect()
    client.loop_stop()
    return got
