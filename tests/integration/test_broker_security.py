"""The broker as docs/broker-security.md sets it up: TLS, one account per device, ACLs, service accounts.

A real Mosquitto on free ports with certificates from ``ioc pki`` and accounts from ``ioc devices``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from ingest.records import ParsedMessage
from ingest.tls import TlsOptions
from ioc.live.source import LiveListener
from ioc.provision import accounts, pki
from ioc.settings import Settings
from simulators.city import build_city
from simulators.engine import SimOptions, Simulator
from simulators.scenario import Intervals, Scenario
from tests.conftest import ingest_env
from tests.support.mqtt import iso
from tests.support.secure_broker import Client, SecureBroker, secure_mosquitto, shipped_mosquitto
from tests.support.services import IngestProcess, free_port, port_open, wait_until

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
CAM_A = accounts.Device("camera", f"SEC-CAM-A-{TAG}")
CAM_B = accounts.Device("camera", f"SEC-CAM-B-{TAG}")
BTS_C = accounts.Device("bts", f"SEC-BTS-C-{TAG}")


@pytest.fixture(scope="module")
def broker() -> Iterator[SecureBroker]:
    log = Path(__file__).resolve().parents[2] / "artifacts" / "broker_security" / "mosquitto.log"
    with secure_mosquitto([CAM_A, CAM_B, BTS_C], plaintext=False, keep_log=log) as b:
        yield b


@contextlib.contextmanager
def client(broker: SecureBroker, user: str | None, tls: TlsOptions | None = None, plain: bool = False,
           **kw: str) -> Iterator[Client]:
    """A client of ``user`` (None: anonymous) over TLS with the broker's CA, or ``tls``; ``plain``: no TLS."""
    c = Client(broker.tls_port, user, broker.passwords.get(user or ""), None if plain else (tls or broker.tls), **kw)
    try:
        yield c
    finally:
        c.close()


def telemetry(seq: int) -> bytes:
    return orjson.dumps({"ts": iso(time.time() - 100 + seq), "seq": seq, "metrics": {"temp_c": 30.0 + seq}})


def test_anonymous_is_refused(broker: SecureBroker) -> None:
    with client(broker, None) as anon:
        rc = anon.connect()
    assert rc is not None and rc.is_failure and "authori" in str(rc).lower(), rc


def test_wrong_password_is_refused(broker: SecureBroker) -> None:
    c = Client(broker.tls_port, CAM_A.device_id, "not-the-password", broker.tls)
    try:
        rc = c.connect()
    finally:
        c.close()
    assert rc is not None and rc.is_failure


def test_plaintext_is_refused_on_the_tls_listener(broker: SecureBroker) -> None:
    """Speaking plain MQTT to a TLS-only broker gets no CONNACK at all (the handshake fails)."""
    with client(broker, CAM_A.device_id, plain=True) as plain:
        assert plain.connect(timeout=3) is None


def test_client_refuses_a_broker_it_does_not_trust(broker: SecureBroker, tmp_path: Path) -> None:
    """The client checks the server's certificate: another CA's bundle means no connection."""
    other, _ = pki.init_pki(tmp_path / "other-ca")
    with client(broker, CAM_A.device_id, tls=TlsOptions(str(other.ca_cert))) as c:
        assert c.connect(timeout=3) is None


def test_device_publishes_only_as_itself(broker: SecureBroker) -> None:
    """Device A's own topics arrive; A's publishes as device B and as another kind never reach the ingest.

    Mosquitto 2.0.11 answers a refused QoS 1 publish of an MQTT 5 client with PUBACK "not authorised" and then
    drops the connection, so each forgery gets a connection of its own.
    """
    a, b, c = CAM_A, CAM_B, BTS_C
    forged = [f"{b.topic_prefix}/telemetry",  # another device of the same kind
              f"ioc/v1/bts/{a.device_id}/telemetry",  # itself, as another kind
              f"{c.topic_prefix}/telemetry",  # another device of another kind
              f"{b.topic_prefix}/status",  # another device's status (its last will topic)
              f"{a.topic_prefix}/junk",  # its own prefix, not a channel: retained ones piled up without end
              f"{a.topic_prefix}/telemetry/deeper",
              "ioc/v2/anything"]
    with client(broker, "ioc-ingest") as ingest:
        rc = ingest.connect()
        assert rc is not None and not rc.is_failure, rc
        assert not ingest.subscribe("ioc/v1/#")[0].is_failure
        for i, topic in enumerate(forged):
            with client(broker, a.device_id) as dev:
                rc = dev.connect()
                assert rc is not None and not rc.is_failure, rc
                dev.publish(topic, telemetry(i))
        with client(broker, a.device_id, will_topic=f"{a.topic_prefix}/status") as dev:
            rc = dev.connect()
            assert rc is not None and not rc.is_failure, rc  # its will (its own status topic) is allowed
            own = f"{a.topic_prefix}/telemetry"
            dev.publish(own, telemetry(99))
            # Delivery is in order per subscriber: once A's own message is in, nothing forged is still coming.
            assert ingest.wait_for(own), ingest.topics()
            assert ingest.topics() == [own]
            # A device reads nothing: Mosquitto grants the subscription but delivers nothing to it.
            dev.subscribe("ioc/v1/#")
            with client(broker, b.device_id) as other:
                other.connect()
                other.publish(f"{b.topic_prefix}/telemetry", telemetry(5))
            assert ingest.wait_for(f"{b.topic_prefix}/telemetry")
            assert dev.topics() == []


def test_service_accounts_are_least_privilege(broker: SecureBroker) -> None:
    """Readers cannot publish; the simulator account can publish as any device but read nothing."""
    own = f"{CAM_A.topic_prefix}/telemetry"
    with client(broker, "ioc-ingest") as watcher, client(broker, "ioc-live") as live, \
            client(broker, "ioc-simulator") as sim:
        for c in (watcher, live, sim):
            assert c.connect() is not None and not c.connack.is_failure  # type: ignore[union-attr]
        watcher.subscribe("ioc/v1/#")
        live.publish(own, telemetry(1))  # a reader forging a device: refused (and disconnected)
        sim.subscribe("ioc/v1/#")
        marker = f"{CAM_B.topic_prefix}/status"
        sim.publish(marker, b'{"state":"online"}')
        assert watcher.wait_for(marker)
        assert own not in watcher.topics()
        assert sim.topics() == []  # the simulator account writes, never reads


def test_newly_provisioned_device_works_after_reload(broker: SecureBroker) -> None:
    """`ioc devices provision` + SIGHUP: the new account connects without restarting the broker."""
    dev = accounts.Device("traffic", f"SEC-TR-{uuid.uuid4().hex[:6]}")
    broker.add_devices([dev])
    deadline = time.monotonic() + 10
    while True:
        with client(broker, dev.device_id) as c:
            rc = c.connect()
        if rc is not None and not rc.is_failure:
            break
        assert time.monotonic() < deadline, f"new device still refused: {rc}"
        time.sleep(0.1)


def test_removed_device_is_refused_after_reload(broker: SecureBroker) -> None:
    """`ioc devices remove` + SIGHUP: the account no longer logs in, and its open connection is dropped."""
    dev = accounts.Device("bts", f"SEC-RM-{uuid.uuid4().hex[:6]}")
    broker.add_devices([dev])
    wait_until(lambda: _connects(broker, dev), 10, 0.1, what="the new device's account")
    with client(broker, dev.device_id) as online:
        rc = online.connect()
        assert rc is not None and not rc.is_failure
        assert accounts.remove([dev.device_id], broker.passwd, broker.acl) == [dev.device_id]
        broker.add_devices([])  # rewrites nothing, fixes ownership, sends SIGHUP
        wait_until(lambda: not _connects(broker, dev), 10, 0.1, what="the removed account refused")
        wait_until(lambda: not online.client.is_connected(), 10, 0.1, what="its open connection dropped")


def test_ingest_worker_stores_messages_over_mqtts(broker: SecureBroker, database_url: str, artifacts: Path) -> None:
    """``ioc ingest`` with IOC_MQTT_URL=mqtts://… and the CA file: a device's readings end in the database."""
    dev = accounts.Device("traffic", f"SEC-ING-{uuid.uuid4().hex[:6]}")
    broker.add_devices([dev])
    env = ingest_env(database_url, 0, IOC_MQTT_URL=f"mqtts://localhost:{broker.tls_port}",
                     IOC_MQTT__USERNAME="ioc-ingest", IOC_MQTT__PASSWORD=broker.passwords["ioc-ingest"],
                     IOC_MQTT__CA_FILE=str(broker.pki.ca_cert),
                     IOC_MQTT__SHARE_GROUP="ioc-ingest")  # the one group the ACL lets ioc-ingest join
    log = artifacts / "ingest-tls.log"
    log.unlink(missing_ok=True)
    with IngestProcess(env, f"sec-{uuid.uuid4().hex[:6]}", log):
        wait_until(lambda: "MQTT connected" in _log(log), 30, 0.1, what="ingest connected over TLS")
        wait_until(lambda: _connects(broker, dev), 10, 0.1, what="the new device's account (after SIGHUP)")
        with client(broker, dev.device_id) as d:
            d.connect()
            for seq in range(5):
                d.publish(f"{dev.topic_prefix}/telemetry", telemetry(seq))
        deadline = time.monotonic() + 30
        while (stored := asyncio.run(_rows(database_url, dev.device_id)))[0] < 5:
            assert time.monotonic() < deadline, f"stored {stored}; ingest log: {_log(log)[-1500:]}"
            time.sleep(0.2)


def _connects(broker: SecureBroker, dev: accounts.Device) -> bool:
    with client(broker, dev.device_id) as c:
        rc = c.connect()
    return rc is not None and not rc.is_failure


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def _rows(dsn: str, device_id: str) -> tuple[int, list[str]]:
    """(telemetry rows, quarantine reasons) of a device."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = int(await conn.fetchval("SELECT count(*) FROM telemetry WHERE device_id = $1", device_id))
        bad = await conn.fetch("SELECT reason || ': ' || detail AS r FROM quarantine WHERE topic LIKE $1",
                               f"%/{device_id}/%")
        return rows, [r["r"] for r in bad]
    finally:
        await conn.close()


async def test_live_listener_over_mqtts(broker: SecureBroker) -> None:
    """The API's live listener (account ioc-live) receives devices' messages over TLS."""
    settings = Settings(mqtt_url=f"mqtts://ioc-live:{broker.passwords['ioc-live']}@localhost:{broker.tls_port}")
    settings.mqtt.ca_file = str(broker.pki.ca_cert)
    got: list[ParsedMessage] = []
    listener = LiveListener(settings, (got.append,))
    task = asyncio.create_task(listener.run())
    try:
        await listener.session.wait_connected(15)
        with client(broker, CAM_B.device_id) as d:
            await asyncio.to_thread(d.connect)
            await asyncio.to_thread(d.publish, f"{CAM_B.topic_prefix}/telemetry", telemetry(7))
        deadline = time.monotonic() + 10
        while not any(r.device_id == CAM_B.device_id for p in got for r in p.records):
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
    finally:
        await listener.stop()
        await asyncio.wait_for(task, 10)


def test_simulator_publishes_over_mqtts(broker: SecureBroker) -> None:
    """The simulator (account ioc-simulator) connects with mqtts:// and the CA file, and its messages arrive."""
    prefix = f"SECSIM{uuid.uuid4().hex[:4]}"
    city = build_city(Scenario(bts=2, bts_sites=1, cameras=1, traffic=2, seed=3, id_prefix=prefix,
                               intervals=Intervals(traffic_s=1, bts_s=1, camera_s=1, snapshot_s=600)))
    with client(broker, "ioc-ingest") as watcher:
        watcher.connect()
        watcher.subscribe("ioc/v1/#")
        opts = SimOptions(mqtt_url=broker.url("ioc-simulator"), tls=broker.tls, duration_s=2.0,
                          ground_truth=None, report_every_s=60, snapshots=False, retain_expiry_s=60)
        stats = Simulator(city, opts).run(None)
        assert stats.sent > 0 and stats.acked == stats.sent, stats
        wait_until(lambda: sum(prefix in t for t in watcher.topics()) >= stats.sent, 10, what="all messages")


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A folder the broker can reach after dropping root (pytest's tmp_path sits under a 0700 folder)."""
    path = Path(tempfile.mkdtemp(prefix="ioc-broker-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_demo_broker_has_a_tls_listener(broker_dir: Path) -> None:
    """`ioc demo`'s private broker: plaintext on its port and mqtts:// next to it, certificates in the data dir."""
    from ioc.infra import Services

    tmp_path = broker_dir
    services = Services(tmp_path)
    port = free_port()
    try:
        url = services._start_private_mosquitto(port)
        assert url == f"mqtt://127.0.0.1:{port}"
        ca = tmp_path / "mosquitto" / "pki" / "ca.crt"
        assert ca.exists() and any(f"mqtts://127.0.0.1:{port + 1}" in n for n in services.notes), services.notes
        wait_until(lambda: port_open(port + 1), 10, what="TLS listener")
        c = Client(port + 1, tls=TlsOptions(str(ca)), host="127.0.0.1")
        try:
            rc = c.connect()
            assert rc is not None and not rc.is_failure, rc
        finally:
            c.close()
    finally:
        services.stop()


def test_shipped_broker_config_runs() -> None:
    """deploy/mosquitto/mosquitto.conf + acl, with only paths and ports changed, on a real Mosquitto: devices
    over TLS on theirs, services on theirs, anonymous refused, and the compose health check command works."""
    dev = accounts.Device("bts", f"SEC-SHIP-{uuid.uuid4().hex[:6]}")
    with shipped_mosquitto([dev]) as shipped:
        for user, port in ((dev.device_id, shipped.device_port), ("ioc-ingest", shipped.service_port)):
            c = Client(port, user, shipped.passwords[user], shipped.tls)
            try:
                rc = c.connect()
                assert rc is not None and not rc.is_failure, (user, rc)
            finally:
                c.close()
        anon = Client(shipped.device_port, tls=shipped.tls)
        try:
            rc = anon.connect()
            assert rc is not None and rc.is_failure, rc
        finally:
            anon.close()
        # compose.yaml's health check, run for real (the ingest account may read the broker's uptime).
        health = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(shipped.plain_port), "-u",
                                 "ioc-ingest", "-P", shipped.passwords["ioc-ingest"], "-t", "$SYS/broker/uptime",
                                 "-C", "1", "-W", "5"], capture_output=True, text=True, timeout=20)
        assert health.returncode == 0 and "seconds" in health.stdout, health


async def test_session_reads_everything_over_tls(broker: SecureBroker) -> None:
    """The ingest's own socket reader (buffered, drained until the TLS layer wants more) loses nothing over TLS:
    a burst of small messages and a 3 MiB snapshot, which spans hundreds of TLS records."""
    from ingest.mqtt_session import MqttSession, SessionOptions

    got: list[tuple[str, int]] = []
    session: MqttSession | None = None

    def on_message(message: object, generation: int) -> None:
        assert session is not None
        got.append((message.topic, len(message.payload)))  # type: ignore[attr-defined]
        session.ack(message.mid, generation)  # type: ignore[attr-defined]

    session = MqttSession(SessionOptions(
        host="localhost", port=broker.tls_port, client_id=f"sec-{uuid.uuid4().hex[:8]}",
        subscriptions=(f"{CAM_A.topic_prefix}/#",), clean_start=True, session_expiry_s=0,
        username="ioc-ingest", password=broker.passwords["ioc-ingest"], tls=broker.tls), on_message)
    task = asyncio.create_task(session.run())
    big = os.urandom(3 * 1024 * 1024)
    n = 2000
    try:
        await session.wait_connected(15)
        pub = Client(broker.tls_port, CAM_A.device_id, broker.passwords[CAM_A.device_id], broker.tls)

        def burst() -> None:
            pub.connect()
            infos = [pub.client.publish(f"{CAM_A.topic_prefix}/telemetry", telemetry(i), qos=1) for i in range(n)]
            infos.append(pub.client.publish(f"{CAM_A.topic_prefix}/snapshot", big, qos=1))
            for info in infos:
                info.wait_for_publish(60)
            pub.close()

        await asyncio.to_thread(burst)
        deadline = time.monotonic() + 30
        while len(got) < n + 1:
            assert time.monotonic() < deadline, len(got)
            await asyncio.sleep(0.02)
    finally:
        await session.stop()
        await asyncio.wait_for(task, 10)
    assert got[-1] == (f"{CAM_A.topic_prefix}/snapshot", len(big))
    assert len(got) == n + 1
