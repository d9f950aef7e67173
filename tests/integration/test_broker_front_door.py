"""A hostile device with valid credentials for its own account, against the shipped broker config.

The real Mosquitto runs deploy/mosquitto/mosquitto.conf and acl (only paths and ports changed) with accounts made
by ``ioc devices``; docs/broker-security.md, "What a hostile device can do", is what these tests hold it to.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest.mqtt_session import MqttSession, SessionOptions
from ioc.cli import main as ioc_main
from ioc.provision import accounts
from ioc.services import LEGACY_SHARE_GROUP, session_options
from ioc.settings import Settings
from tests.conftest import ingest_env
from tests.integration.test_broker_security import _rows, telemetry
from tests.support.secure_broker import ShippedBroker, shipped_mosquitto
from tests.support.services import IngestProcess

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
EVIL = accounts.Device("camera", f"FD-EVIL-{TAG}")
VICTIM = accounts.Device("traffic", f"FD-VIC-{TAG}")


@pytest.fixture(scope="module")
def broker() -> Iterator[ShippedBroker]:
    with shipped_mosquitto([EVIL, VICTIM]) as b:
        yield b


def _client(b: ShippedBroker, user: str, client_id: str, port: int, clean: bool = True) -> tuple[mqtt.Client, dict]:
    """A connected paho client and its record: CONNACK reason, disconnects, messages."""
    rec: dict = {"connack": None, "lost": 0, "got": 0}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, b.passwords[user])
    c.tls_set_context(b.tls.context())
    c.on_connect = lambda cl, u, f, rc, p: rec.update(connack=rc)
    c.on_disconnect = lambda cl, u, f, rc, p: rec.update(lost=rec["lost"] + 1)
    c.on_message = lambda cl, u, m: rec.update(got=rec["got"] + 1)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0 if clean else 3600
    try:
        c.connect("localhost", port, 30, clean_start=clean, properties=props)
    except OSError:
        return c, rec
    c.loop_start()
    deadline = time.monotonic() + 5
    while rec["connack"] is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return c, rec


def _publish_acked(c: mqtt.Client, topic: str, payload: bytes) -> None:
    """Publish at QoS 1 until the broker acknowledges it (a kicked client reconnects: paho's loop does)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            info = c.publish(topic, payload, qos=1)
            info.wait_for_publish(5)
            if info.is_published():
                return
        except (RuntimeError, ValueError):
            pass
        assert time.monotonic() < deadline, f"no PUBACK for {topic}"
        time.sleep(0.05)


def _victim_publishes(b: ShippedBroker, count: int) -> None:
    """The honest device sends ``count`` telemetry readings (QoS 1, each acknowledged), then leaves."""
    victim, _ = _client(b, VICTIM.device_id, "v", b.device_port)
    for seq in range(count):
        victim.publish(f"{VICTIM.topic_prefix}/telemetry", telemetry(seq), qos=1).wait_for_publish(10)
    victim.disconnect()
    victim.loop_stop()


def _hijack(b: ShippedBroker, client_ids: list[str], stop: threading.Event, tries: list[str]) -> None:
    """The hostile device: connects again and again under others' client ids, on every port it can reach, with a
    persistent session (clean_start false) and a subscription to everything."""
    while not stop.is_set():
        for cid in client_ids:
            for port in {b.device_port, b.service_port}:
                c, rec = _client(b, EVIL.device_id, cid, port, clean=False)
                tries.append(str(rec["connack"]))
                if rec["connack"] is not None and not rec["connack"].is_failure:
                    c.subscribe("#", qos=1)
                    time.sleep(0.15)  # hold the stolen session a moment
                c.disconnect()
                c.loop_stop()


def test_device_cannot_take_over_the_ingest_session_or_another_device(broker: ShippedBroker, database_url: str,
                                                                       artifacts: Path) -> None:
    """A device connecting under the ingest worker's client id (and under another device's) neither kicks them nor
    inherits the ingest's persistent session: every reading the broker acknowledged is stored, none is dropped.

    Before the fix (one listener for all, client ids free) the device kicked ``ioc ingest`` on each connect, took its
    session and the broker dropped the readings queued in it (the device may read nothing): stored < published.
    """
    ingest_id = f"ioc-ingest-fd-{TAG}"
    env = ingest_env(database_url, 0, IOC_MQTT_URL=f"mqtts://localhost:{broker.service_port}",
                     IOC_MQTT__USERNAME="ioc-ingest", IOC_MQTT__PASSWORD=broker.passwords["ioc-ingest"],
                     IOC_MQTT__CA_FILE=str(broker.pki.ca_cert), IOC_MQTT__RECONNECT_MAX_S="0.5")
    log = artifacts / "front-door-ingest.log"
    log.unlink(missing_ok=True)
    n = 300
    with IngestProcess(env, ingest_id, log):
        victim, vrec = _client(broker, VICTIM.device_id, VICTIM.device_id, broker.device_port)
        assert vrec["connack"] is not None and not vrec["connack"].is_failure, vrec
        stop, tries = threading.Event(), []
        thief = threading.Thread(target=_hijack, args=(broker, [ingest_id, VICTIM.device_id], stop, tries))
        thief.start()
        try:
            for seq in range(n):
                _publish_acked(victim, f"{VICTIM.topic_prefix}/telemetry", telemetry(seq))
                time.sleep(0.01)
        finally:
            stop.set()
            thief.join(20)
        deadline = time.monotonic() + 15
        while (stored := asyncio.run(_rows(database_url, VICTIM.device_id))[0]) < n:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        kicked, victim_kicked = log.read_text(errors="replace").count("MQTT connection lost"), vrec["lost"]
        victim.disconnect()
        victim.loop_stop()
    assert len(tries) >= 4, tries
    assert (stored, kicked, victim_kicked) == (n, 0, 0), \
        f"stored {stored} of {n}; ingest kicked {kicked}x, victim kicked {victim_kicked}x; hijack CONNACKs {tries[:8]}"


async def test_device_cannot_join_the_ingest_share_group(broker: ShippedBroker, tmp_path: Path) -> None:
    """A device subscribing to ``$share/<group>/ioc/v1/#`` joins the group; Mosquitto hands it its turn of the
    messages and drops each one (its ACL may read nothing). ``ioc devices services`` gives the ingest workers a secret
    group (compose reads it), so a device cannot name it: the worker gets every message.

    Before the fix the workers' group was the guessable ``ioc-ingest``: the device swallowed half of them.
    """
    out = tmp_path / "svc.env"
    assert ioc_main(["devices", "services", "--out", str(out), "--passwd", str(tmp_path / "pw"),
                     "--acl", str(tmp_path / "acl"), "--dynsec", str(tmp_path / "dynsec.json")]) == 0
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line and line[0] != "#")
    group = env.get(accounts.SHARE_GROUP_ENV, "ioc-ingest")  # compose's fallback when the line is missing
    got: list[str] = []
    session: MqttSession | None = None

    def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
        got.append(message.topic)
        assert session is not None
        session.ack(message.mid, generation)

    session = MqttSession(SessionOptions(
        host="localhost", port=broker.service_port, client_id=f"ioc-ingest-fd2-{TAG}",
        subscriptions=(f"$share/{group}/ioc/v1/#",), clean_start=True, session_expiry_s=0,
        username="ioc-ingest", password=broker.passwords["ioc-ingest"], tls=broker.tls), on_message)
    task = asyncio.create_task(session.run())
    thieves = []
    try:
        await session.wait_connected(15)
        for name in ("ioc-ingest", "ioc", "ingest", group):  # the guessable names, and the secret one if leaked
            if name == group and name != "ioc-ingest":
                continue  # a device that knows the secret is out of scope
            c, rec = await asyncio.to_thread(_client, broker, EVIL.device_id, f"x{len(thieves)}", broker.device_port)
            c.subscribe(f"$share/{name}/ioc/v1/#", qos=1)
            thieves.append((c, rec))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(_victim_publishes, broker, 200)
        deadline = time.monotonic() + 5
        while len(got) < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        for c, _ in thieves:
            c.disconnect()
            c.loop_stop()
        await session.stop()
        await asyncio.wait_for(task, 10)
    assert len(got) == 200, f"the worker got {len(got)} of 200 (group {group})"
    assert group.startswith("ioc-ingest-") and len(group) >= 30, group


def test_device_cannot_log_in_on_the_service_listener_and_health_check_works(broker: ShippedBroker) -> None:
    """Only service accounts log in on the services' listener; the compose health check still runs."""
    if broker.service_port == broker.device_port:
        pytest.fail("the shipped config has no listener of its own for the IOC's services")
    c, rec = _client(broker, EVIL.device_id, "anything", broker.service_port)
    c.loop_stop()
    assert rec["connack"] is not None and rec["connack"].is_failure, rec
    health = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.plain_port), "-u", "ioc-ingest",
                             "-P", broker.passwords["ioc-ingest"], "-t", "$SYS/broker/uptime", "-C", "1", "-W", "5"],
                            capture_output=True, text=True, timeout=20)
    assert health.returncode == 0 and "seconds" in health.stdout, health


async def test_worker_moved_to_a_secret_group_leaves_the_old_one(broker: ShippedBroker) -> None:
    """A deployment from before the secret group: each worker's persistent session is subscribed to
    ``$share/ioc-ingest/...``. Given the secret group, the worker drops the old one from its resumed session, so it
    gets each reading once, not once per group (before: 100 readings arrived 200 times)."""
    client_id = f"ioc-ingest-fd3-{TAG}"
    got: list[int] = []
    session: MqttSession | None = None

    def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
        got.append(message.mid)
        assert session is not None
        session.ack(message.mid, generation)

    settings = Settings(mqtt_url=f"mqtts://ioc-ingest:{broker.passwords['ioc-ingest']}@localhost:{broker.service_port}")
    settings.mqtt.ca_file = str(broker.pki.ca_cert)
    settings.mqtt.session_expiry_s = 300
    for group in (LEGACY_SHARE_GROUP, accounts.new_share_group()):  # the worker before, then after the upgrade
        settings.mqtt.share_group = group
        session = MqttSession(session_options(settings, client_id), on_message)
        task = asyncio.create_task(session.run())
        await session.wait_connected(15)
        if group != LEGACY_SHARE_GROUP:
            break
        await session.stop()
        await asyncio.wait_for(task, 10)
    assert session is not None
    try:
        await asyncio.sleep(0.3)  # the UNSUBSCRIBE follows the SUBSCRIBE on the same connection
        await asyncio.to_thread(_victim_publishes, broker, 100)
        deadline = time.monotonic() + 3
        while len(got) < 200 and time.monotonic() < deadline:  # wait for copies that should not come
            await asyncio.sleep(0.05)
    finally:
        await session.stop(session_expiry_s=0)
        await asyncio.wait_for(task, 10)
    assert len(got) == 100, f"the worker got {len(got)} messages for 100 readings"


def test_one_connection_per_device_account(broker: ShippedBroker) -> None:
    """Ten connections with one device's credentials and ten client ids: the broker keeps one (each new one closes
    the previous, all under the account's id). Before: all ten stayed connected."""
    clients = []
    try:
        for i in range(10):
            c, rec = _client(broker, EVIL.device_id, f"many-{i}-{TAG}", broker.device_port)
            c.reconnect_delay_set(30, 60)  # a closed one stays closed: count what the broker keeps
            clients.append((c, rec))
        time.sleep(0.5)
        assert all(rec["connack"] is not None and not rec["connack"].is_failure for _, rec in clients)
        assert sum(c.is_connected() for c, _ in clients) == 1, [rec for _, rec in clients]
    finally:
        for c, _ in clients:
            c.disconnect()
            c.loop_stop()
