"""The simulator against the real Mosquitto: messages arrive, validate, count, and wills fire."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import urlsplit

import orjson
import paho.mqtt.client as mqtt
import pytest

from ingest.parse import parse_message
from simulators.city import build_city
from simulators.engine import SimOptions, Simulator
from simulators.scenario import IncidentSpec, Intervals, Scenario
from tests.conftest import MQTT_URL

pytestmark = pytest.mark.integration


class Recorder:
    """Subscribes to ioc/v1/# and keeps the messages of one run (by device id prefix)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix + "-"
        self.messages: list[tuple[str, bytes, datetime]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        url = urlsplit(MQTT_URL)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe("ioc/v1/#", qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(url.hostname or "127.0.0.1", url.port or 1883)
        self.client.loop_start()
        assert self.subscribed.wait(10), "no SUBACK from the broker"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.split("/")[3].startswith(self.prefix):
            with self.lock:
                self.messages.append((msg.topic, msg.payload, datetime.now(UTC)))

    def wait_for(self, predicate: object, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(list(self.messages)):  # type: ignore[operator]
                    return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def prefix() -> str:
    return f"it{uuid.uuid4().hex[:8]}"


@pytest.fixture
def recorder(prefix: str) -> Iterator[Recorder]:
    rec = Recorder(prefix)
    yield rec
    rec.close()


def _stopped(n: int):  # type: ignore[no-untyped-def]
    return lambda msgs: sum(1 for t, p, _ in msgs if t.endswith("/status") and b"simulator stopped" in p) >= n


def test_pooled_run_publishes_valid_counted_messages(prefix: str, recorder: Recorder) -> None:
    scenario = Scenario(scale="tiny", id_prefix=prefix, seed=3, snapshot_width=320, snapshot_height=180,
                        intervals=Intervals(traffic_s=0.5, bts_s=0.5, camera_s=1, snapshot_s=1))
    city = build_city(scenario)
    # Two processes: the load-driver path (spawned shards, shared counters, one start instant).
    stats = Simulator(city, SimOptions(mqtt_url=MQTT_URL, duration_s=3, retain_expiry_s=60, processes=2,
                                       report_every_s=1)).run()
    assert stats.acked == stats.sent > 60
    assert recorder.wait_for(_stopped(len(city.devices))), "offline-on-exit statuses did not all arrive"
    seqs: dict[str, list[int]] = {}
    channels: set[str] = set()
    for topic, payload, received in recorder.messages:
        parsed = parse_message(topic, payload, received)
        assert parsed.rejections == [], (topic, payload[:200])
        _, _, _, dev, channel = topic.split("/")
        channels.add(channel)
        if channel == "telemetry":
            seqs.setdefault(dev, []).append(orjson.loads(payload)["seq"])
    assert channels == {"telemetry", "status", "snapshot"}
    assert set(seqs) == {d.id for d in city.devices}
    for dev, s in seqs.items():
        assert s == list(range(1, len(s) + 1)), dev


def test_per_device_connection_killed_leaves_its_will(prefix: str, recorder: Recorder) -> None:
    scenario = Scenario(scale="tiny", id_prefix=prefix, bts=2, bts_sites=1, cameras=1, traffic=3,
                        intervals=Intervals(traffic_s=0.25, bts_s=0.5, camera_s=0.5, snapshot_s=5))
    victim = build_city(scenario).by_kind("traffic")[0].id
    city = build_city(scenario.model_copy(update={"incidents": [IncidentSpec(
        kind="device_silent", device=victim, at=1.0, duration_s=600, params={"disconnect": True})]}))
    sim = Simulator(city, SimOptions(mqtt_url=MQTT_URL, connections="per-device", duration_s=2.5,
                                     retain_expiry_s=60))
    stats = sim.run()
    assert stats.acked == stats.sent
    will_topic = f"ioc/v1/traffic/{victim}/status"
    assert recorder.wait_for(lambda msgs: any(t == will_topic and b"connection lost" in p for t, p, _ in msgs))
    assert recorder.wait_for(_stopped(len(city.devices) - 1))
    mine = [(t, p, r) for t, p, r in recorder.messages if f"/{victim}/" in t]
    will = next(p for t, p, _ in mine if t == will_topic and b"connection lost" in p)
    assert orjson.loads(will) == {"state": "offline", "reason": "connection lost"}  # from the broker, no ts
    (update,) = parse_message(will_topic, will, datetime.now(UTC)).records
    assert update.state == "offline"  # type: ignore[union-attr]
    after = mine[[p for _, p, _ in mine].index(will) + 1:]
    assert not any(t.endswith("/telemetry") for t, _, _ in after)  # silent from then on
    assert not any(b"simulator stopped" in p for _, p, _ in mine)
