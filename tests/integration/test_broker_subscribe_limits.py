"""What a device's account may hold on the shipped broker: no subscriptions, and nothing once it is revoked.

The real Mosquitto runs deploy/mosquitto/mosquitto.conf (only paths and ports changed); device accounts live in the
dynamic-security plugin, written by ``ioc devices`` (its file before the start, its control topic on the running
broker). docs/broker-security.md, "What a hostile device can do", gives the figures before and after.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from ingest.contract import CHANNELS_BY_KIND
from ioc.cli import main as ioc_main
from ioc.provision import accounts, dynsec
from tests.support.secure_broker import Client, ShippedBroker, shipped_mosquitto

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
EVIL = accounts.Device("camera", f"SL-EVIL-{TAG}")
OTHER = accounts.Device("traffic", f"SL-OTHER-{TAG}")
HONEST = accounts.Device("camera", f"SL-HONEST-{TAG}")
STOLEN = accounts.Device("bts", f"SL-STOLEN-{TAG}")
ROTATED = accounts.Device("bts", f"SL-ROT-{TAG}")
N_SUBSCRIBE = 5_000  # the old config took each: 2.9 KB of the broker's memory per 1 KB filter


@pytest.fixture(scope="module")
def broker() -> Iterator[ShippedBroker]:
    with shipped_mosquitto([EVIL, OTHER, HONEST, STOLEN, ROTATED]) as b:
        yield b


@pytest.fixture
def admin_env(broker: ShippedBroker, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`ioc devices` arguments that reach the running broker's plugin (its password from the environment)."""
    monkeypatch.setenv(dynsec.ADMIN_ENV, broker.passwords.get(dynsec.ADMIN, ""))
    return ["--admin-url", f"mqtts://localhost:{broker.device_port}", "--ca-file", str(broker.pki.ca_cert)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def reader(b: ShippedBroker) -> Client:
    """The API's live listener account on the service listener, reading every device topic."""
    c = Client(b.service_port, "ioc-live", b.passwords["ioc-live"], b.tls)
    assert c.connect() is not None
    assert not c.subscribe("ioc/v1/#")[0].is_failure
    return c


class Device:
    """A device's connection that records when the broker drops it; paho does not reconnect it."""

    def __init__(self, b: ShippedBroker, user: str, password: str) -> None:
        self.lost_at: float | None = None
        self.connack: object = None
        self.ready = threading.Event()
        self.granted: dict[int, list[ReasonCode]] = {}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anything", protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, password)
        self.c.tls_set_context(b.tls.context())
        self.c.on_connect = lambda cl, u, f, rc, p: (setattr(self, "connack", rc), self.ready.set())
        self.c.on_disconnect = lambda cl, u, f, rc, p: setattr(self, "lost_at", time.monotonic())
        self.c.on_subscribe = lambda cl, u, mid, rcs, p: self.granted.__setitem__(mid, list(rcs))
        self.c.reconnect_delay_set(600, 600)
        self.c.connect("localhost", b.device_port, 30)
        self.c.loop_start()
        assert self.ready.wait(10)

    @property
    def accepted(self) -> bool:
        return isinstance(self.connack, ReasonCode) and not self.connack.is_failure

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_a_device_can_subscribe_to_nothing(broker: ShippedBroker) -> None:
    """Before: every SUBSCRIBE was granted (the ACL file checks reads only when it delivers), 20,000 distinct 1 KB
    filters grew the broker by 57 MB. Now the plugin refuses each at SUBSCRIBE: the device holds none."""
    dev = Device(broker, EVIL.device_id, broker.passwords[EVIL.device_id])
    live = reader(broker)
    try:
        assert dev.accepted, dev.connack
        filters = ["#", "$SYS/#", f"ioc/v1/{OTHER.kind}/{OTHER.device_id}/telemetry", f"{EVIL.topic_prefix}/event",
                   "$share/ioc-ingest/ioc/v1/#", dynsec.RESPONSE_TOPIC, "ioc/v1/+/+/status"]
        mids = {f: dev.c.subscribe(f, 1)[1] for f in filters}
        time.sleep(0.3)
        before = rss_mb(broker.proc.pid)
        last = 0
        for i in range(N_SUBSCRIBE):
            last = dev.c.subscribe(f"x/{i}/" + "y" * 1000, 0)[1]
        deadline = time.monotonic() + 20
        while last not in dev.granted and time.monotonic() < deadline:
            time.sleep(0.05)
        grown = rss_mb(broker.proc.pid) - before
        refused = {f: dev.granted[m][0].is_failure for f, m in mids.items() if m in dev.granted}
        assert refused == dict.fromkeys(filters, True), refused
        granted = sum(1 for rcs in dev.granted.values() if not rcs[0].is_failure)
        assert granted == 0 and len(dev.granted) == len(filters) + N_SUBSCRIBE, (granted, len(dev.granted))
        assert grown < 3, f"the broker grew {grown:.1f} MB for {N_SUBSCRIBE} refused subscriptions"
        # It still publishes on its own topics; another device's readings reach the IOC and not the device.
        assert dev.c.publish(f"{EVIL.topic_prefix}/telemetry", b"{}", qos=1).rc == 0
        other = Client(broker.device_port, OTHER.device_id, broker.passwords[OTHER.device_id], broker.tls)
        assert other.connect() is not None
        other.publish(f"{OTHER.topic_prefix}/telemetry", b'{"x":1}')
        other.close()
        assert live.wait_for(f"{OTHER.topic_prefix}/telemetry") and live.wait_for(f"{EVIL.topic_prefix}/telemetry")
        # Nor can it use the plugin's control topic: a createClient from it changes nothing.
        dev.c.publish(dynsec.CONTROL_TOPIC, json.dumps({"commands": [
            {"command": "createClient", "username": f"SL-MINE-{TAG}", "password": "x"}]}), qos=1).wait_for_publish(5)
    finally:
        dev.close()
        live.close()
    with dynsec.DynsecAdmin(f"mqtts://localhost:{broker.device_port}", broker.tls,
                            broker.passwords[dynsec.ADMIN]) as admin:
        assert f"SL-MINE-{TAG}" not in admin.clients()


def test_revocation_drops_a_live_session(broker: ShippedBroker, admin_env: list[str]) -> None:
    """`ioc devices remove --admin-url`: the stolen account's open connection is closed within a second, what it
    publishes after that reaches nobody, and it cannot log in again. A second run finds nothing (exit 1)."""
    password = broker.passwords[STOLEN.device_id]
    dev = Device(broker, STOLEN.device_id, password)
    live = reader(broker)
    try:
        assert dev.accepted, dev.connack
        dev.c.publish(f"{STOLEN.topic_prefix}/telemetry", b"{}", qos=1).wait_for_publish(5)
        assert live.wait_for(f"{STOLEN.topic_prefix}/telemetry")
        t0 = time.monotonic()
        assert ioc_main(["devices", "remove", STOLEN.device_id, *admin_env]) == 0
        deadline = t0 + 5
        while dev.lost_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dev.lost_at is not None, "the revoked device is still connected"
        assert dev.lost_at - t0 < 2, f"dropped {dev.lost_at - t0:.2f} s after the command started"
        again = Device(broker, STOLEN.device_id, password)
        assert not again.accepted, again.connack
        again.close()
        assert ioc_main(["devices", "remove", STOLEN.device_id, *admin_env]) == 1
        assert live.topics().count(f"{STOLEN.topic_prefix}/telemetry") == 1
    finally:
        dev.close()
        live.close()


def test_rotation_drops_the_old_password(broker: ShippedBroker, admin_env: list[str], tmp_path: Path) -> None:
    """`ioc devices provision --rotate --admin-url`: the connection made with the old password is closed and the
    old password no longer logs in; the new one does."""
    old = broker.passwords[ROTATED.device_id]
    dev = Device(broker, ROTATED.device_id, old)
    try:
        assert dev.accepted, dev.connack
        out = tmp_path / "rotated.csv"
        assert ioc_main(["devices", "provision", ROTATED.kind, ROTATED.device_id, "--rotate", "--out", str(out),
                         *admin_env]) == 0
        new = out.read_text().splitlines()[1].split(",")[3]
        deadline = time.monotonic() + 5
        while dev.lost_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert dev.lost_at is not None, "the old password's connection survived the rotation"
        stale = Device(broker, ROTATED.device_id, old)
        fresh = Device(broker, ROTATED.device_id, new)
        assert (stale.accepted, fresh.accepted) == (False, True), (stale.connack, fresh.connack)
        stale.close()
        fresh.close()
    finally:
        dev.close()


def test_honest_devices_work_end_to_end(broker: ShippedBroker, admin_env: list[str], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A device provisioned before the start (the plugin's file) and one added to the running broker publish on
    every channel of their kind (a retained status included, and a last will); the IOC's reader gets all of it.
    Provisioning again keeps the account (idempotent); the same id as another kind is refused."""
    out = tmp_path / "new.csv"
    new = accounts.Device("traffic", f"SL-NEW-{TAG}")
    assert ioc_main(["devices", "provision", new.kind, new.device_id, "--out", str(out), *admin_env]) == 0
    password = out.read_text().splitlines()[1].split(",")[3]
    assert ioc_main(["devices", "provision", new.kind, new.device_id, "--out", str(tmp_path / "2.csv"),
                     *admin_env]) == 0
    assert "0 account(s) created, 1 already provisioned" in capsys.readouterr().out
    assert not (tmp_path / "2.csv").exists()
    assert ioc_main(["devices", "provision", "camera", new.device_id, "--out", str(tmp_path / "3.csv"),
                     *admin_env]) == 2
    live = reader(broker)
    try:
        for dev, pw in ((HONEST, broker.passwords[HONEST.device_id]), (new, password)):
            c = Client(broker.device_port, dev.device_id, pw, broker.tls, will_topic=f"{dev.topic_prefix}/status")
            rc = c.connect()
            assert rc is not None and not rc.is_failure, (dev, rc)
            for channel in sorted(CHANNELS_BY_KIND[dev.kind]):
                info = c.client.publish(f"{dev.topic_prefix}/{channel}", b"{}", qos=1, retain=channel == "status")
                info.wait_for_publish(5)
                assert info.is_published(), (dev, channel)
            for channel in CHANNELS_BY_KIND[dev.kind]:
                assert live.wait_for(f"{dev.topic_prefix}/{channel}"), (dev, channel)
            c.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
            c.client.loop_stop()
        status = f"{new.topic_prefix}/status"
        deadline = time.monotonic() + 10  # its reading came at once; its will follows the disconnect
        while live.topics().count(status) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert live.topics().count(status) == 2, live.topics()  # its reading and its will
    finally:
        live.close()
