"""Client certificates with the dynamic-security plugin: ``require_certificate`` + ``use_identity_as_username``.

A private Mosquitto on free ports: a device listener as deploy/mosquitto/mosquitto.conf's commented option sets
it up (TLS, the plugin, a client certificate required, its CN the account, ``crlfile``), and a loopback observer
listener without TLS that reads everything. Certificates come from ``ioc pki`` (``client --csv``, ``revoke``),
accounts from ``ioc devices provision --cert`` and ``remove --admin-url`` (the admin logs in with its certificate).
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ingest.tls import TlsOptions
from ioc.cli import main
from ioc.provision import accounts, dynsec, pki, revocation
from tests.support.secure_broker import Client, _broker_owns, dynsec_plugin
from tests.support.services import MOSQUITTO, free_port, port_open, wait_until

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
CAM_A = accounts.Device("camera", f"CRT-CAM-A-{TAG}")
CAM_B = accounts.Device("camera", f"CRT-CAM-B-{TAG}")
BTS_R = accounts.Device("bts", f"CRT-BTS-R-{TAG}")  # revoked during the tests
STRAY = f"CRT-CAM-S-{TAG}"  # a certificate of the CA without an account


@dataclass
class CertBroker:
    root: Path
    port: int  # the device listener: TLS, certificate required
    observer: int  # loopback, anonymous, no plugin: sees what gets through
    store: pki.Pki
    other: pki.Pki  # another CA, unknown to the broker
    proc: subprocess.Popen[bytes]

    def tls(self, name: str | None, store: pki.Pki | None = None) -> TlsOptions:
        store = store or self.store
        if name is None:
            return TlsOptions(str(self.store.ca_cert))
        return TlsOptions(str(self.store.ca_cert), str(store.client_cert(name)), str(store.client_key(name)))

    def log(self) -> str:
        return (self.root / "mosquitto.log").read_text(errors="replace")


@pytest.fixture(scope="module")
def broker() -> Iterator[CertBroker]:
    root = Path(tempfile.mkdtemp(prefix="ioc-cert-mqtt-"))
    root.chmod(0o755)
    try:
        certs = root / "certs"
        assert main(["pki", "init", "--dir", str(certs), "--host", "localhost"]) == 0
        store = pki.Pki(certs)
        other, _ = pki.init_pki(root / "other")
        pki.issue_client(other, CAM_A.device_id)
        devices = root / "devices.csv"
        with devices.open("w", newline="") as out:
            w = csv.writer(out)
            w.writerows([["kind", "device_id"], *[[d.kind, d.device_id] for d in (CAM_A, CAM_B, BTS_R)]])
        assert main(["pki", "client", "--csv", str(devices), "--dir", str(certs), "--quiet"]) == 0
        assert main(["pki", "client", STRAY, "--dir", str(certs)]) == 0
        assert main(["pki", "client", dynsec.ADMIN, "--dir", str(certs)]) == 0
        dyn = root / "dynamic-security.json"
        dynsec.init_file(dyn)
        assert main(["devices", "provision", "--cert", "--csv", str(devices), "--dynsec", str(dyn)]) == 0
        port, observer = free_port(), free_port()
        (root / "mosquitto.conf").write_text("\n".join([
            "per_listener_settings true", "persistence false", f"log_dest file {root}/mosquitto.log", "log_type all",
            f"listener {port} 127.0.0.1", f"cafile {store.ca_cert}", f"certfile {store.server_cert}",
            f"keyfile {store.server_key}", "tls_version tlsv1.2", f"crlfile {revocation.crl_path(store)}",
            "use_username_as_clientid true", "allow_anonymous false", "require_certificate true",
            "use_identity_as_username true", f"plugin {dynsec_plugin()}", f"plugin_opt_config_file {dyn}",
            f"listener {observer} 127.0.0.1", "allow_anonymous true"]) + "\n")
        _broker_owns(root)
        proc = subprocess.Popen([MOSQUITTO, "-c", str(root / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: port_open(port) and port_open(observer), 10, what="cert broker")
            yield CertBroker(root, port, observer, store, other, proc)
        finally:
            proc.terminate()
            proc.wait(5)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def device(broker: CertBroker, name: str | None, store: pki.Pki | None = None) -> Iterator[Client]:
    """A client with ``name``'s certificate (None: none), claiming to be CAM_B in its username."""
    c = Client(broker.port, CAM_B.device_id, "not-checked", broker.tls(name, store))
    try:
        yield c
    finally:
        c.close()


@contextlib.contextmanager
def observer(broker: CertBroker) -> Iterator[Client]:
    c = Client(broker.observer)
    try:
        rc = c.connect()
        assert rc is not None and not rc.is_failure, rc
        assert not c.subscribe("ioc/v1/#")[0].is_failure
        yield c
    finally:
        c.close()


def connected(c: Client, timeout: float = 5.0) -> bool:
    rc = c.connect(timeout)
    return rc is not None and not rc.is_failure


def test_bulk_issuance_wrote_private_keys(broker: CertBroker) -> None:
    for dev in (CAM_A, CAM_B, BTS_R):
        assert broker.store.client_cert(dev.device_id).exists()
        assert broker.store.client_key(dev.device_id).stat().st_mode & 0o777 == 0o600


def test_device_publishes_on_its_own_topics_only(broker: CertBroker) -> None:
    """A's certificate makes it A whatever username it sends (CAM_B's here): B's topic is refused, A's arrives.

    A refused QoS 1 publish of an MQTT 5 client is answered and then the connection dropped (Mosquitto 2.0.11), so
    the forgery gets a connection of its own; delivery is in order, so once A's message is in nothing forged is
    still coming.
    """
    with observer(broker) as obs:
        for i, topic in enumerate([f"{CAM_B.topic_prefix}/telemetry", f"ioc/v1/bts/{CAM_A.device_id}/telemetry"]):
            with device(broker, CAM_A.device_id) as a:
                assert connected(a)
                a.publish(topic, b'{"seq": %d}' % i)
        with device(broker, CAM_A.device_id) as a:
            assert connected(a)
            own = f"{CAM_A.topic_prefix}/telemetry"
            a.publish(own, b'{"seq": 9}')
            assert obs.wait_for(own), obs.topics()
        assert obs.topics() == [own]
    assert f"as {CAM_A.device_id} " in broker.log()  # the session is named after the certificate


@pytest.mark.parametrize("case", ["no certificate", "another CA"])
def test_refused_without_a_certificate_of_the_ca(broker: CertBroker, case: str) -> None:
    with device(broker, None if case == "no certificate" else CAM_A.device_id,
                broker.other if case == "another CA" else None) as c:
        assert c.connect(timeout=3) is None  # the TLS handshake fails: no CONNACK


def test_certificate_without_an_account_publishes_nothing(broker: CertBroker) -> None:
    """The plugin does not check cert-identity clients at CONNECT (2.0.11): a certificate of the CA whose CN has
    no account gets in, but its role-less account may publish nowhere (default deny)."""
    with observer(broker) as obs:
        with device(broker, STRAY) as s:
            assert connected(s)
            s.publish(f"ioc/v1/camera/{STRAY}/telemetry", b"{}")
        with device(broker, CAM_B.device_id) as b:
            assert connected(b)
            b.publish(f"{CAM_B.topic_prefix}/telemetry", b"{}")
            assert obs.wait_for(f"{CAM_B.topic_prefix}/telemetry")
        assert obs.topics() == [f"{CAM_B.topic_prefix}/telemetry"]


def test_revocation_needs_a_reload_and_removal_cuts_off(broker: CertBroker) -> None:
    """``ioc pki revoke``: the broker reads the CRL at start and on SIGHUP; an open connection of the revoked
    certificate survives both, and ``ioc devices remove --admin-url`` (the admin with its certificate) closes it."""
    name = BTS_R.device_id
    assert main(["pki", "revoke", name, "--dir", str(broker.store.root)]) == 0
    serial = x509.load_pem_x509_certificate(broker.store.client_cert(name).read_bytes()).serial_number
    assert serial in revocation.revoked_serials(broker.store)
    with device(broker, name) as again:
        assert connected(again)  # the new CRL is not read yet
    # (one connection at a time: the client id is the certificate's CN, a second connection takes the first over)
    with device(broker, name) as held:
        assert connected(held)
        broker.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "Reloading config" in broker.log(), 5, what="reload")
        time.sleep(0.5)
        with device(broker, name) as again:
            assert again.connect(timeout=3) is None  # refused at the handshake now
        assert held.client.is_connected()  # the open connection was not dropped
        with device(broker, CAM_B.device_id) as other:
            assert connected(other)  # everyone else still gets in
        admin = broker.tls(dynsec.ADMIN)
        url = f"mqtts://localhost:{broker.port}"
        assert main(["devices", "remove", name, "--admin-url", url, "--ca-file", str(admin.ca_file),
                     "--cert-file", str(admin.cert_file), "--key-file", str(admin.key_file)]) == 0
        wait_until(lambda: not held.client.is_connected(), 5, what="the revoked device's connection to close")


def test_an_unreadable_crl_on_sighup_fails_open(broker: CertBroker) -> None:
    """Mosquitto 2.0.11's hazard, held here so an upgrade that fixes it shows: a SIGHUP while ``crlfile`` is
    unreadable logs "Unable to load certificate revocation file" and keeps running with no CRL check at all, so a
    revoked certificate gets in again (at start the same file stops the broker). ``ioc pki revoke`` therefore
    replaces the file atomically; docs/broker-security.md says to check the log after the reload."""
    name = BTS_R.device_id
    crl = revocation.crl_path(broker.store)
    good = crl.read_bytes()
    assert serial_of(broker, name) in revocation.revoked_serials(broker.store)  # revoked by the test above
    try:
        crl.write_text("not a CRL\n")
        broker.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "Unable to load certificate revocation file" in broker.log(), 5, what="the reload error")
        time.sleep(0.5)
        with device(broker, name) as again:
            assert connected(again)  # fails open
    finally:
        crl.write_bytes(good)
        broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: broker.log().count("Reloading config") >= 3, 5, what="reload")
    time.sleep(0.5)
    with device(broker, name) as again:
        assert again.connect(timeout=3) is None  # the good CRL back: refused again


def serial_of(broker: CertBroker, name: str) -> int:
    return x509.load_pem_x509_certificate(broker.store.client_cert(name).read_bytes()).serial_number


def test_an_expired_crl_refuses_everyone(broker: CertBroker) -> None:
    """A CRL past its next update makes OpenSSL refuse every client certificate (why ``ioc pki check`` lists it)."""
    crl = revocation.crl_path(broker.store)
    good = crl.read_bytes()
    ca, key = pki._load_ca(broker.store)
    now = dt.datetime.now(dt.UTC)
    expired = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
               .last_update(now - dt.timedelta(days=10)).next_update(now - dt.timedelta(days=1))
               .sign(key, hashes.SHA256()))
    reloads = broker.log().count("Reloading config")
    try:
        crl.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
        broker.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: broker.log().count("Reloading config") > reloads, 5, what="reload")
        time.sleep(0.5)
        with device(broker, CAM_B.device_id) as b:
            assert b.connect(timeout=3) is None
    finally:
        crl.write_bytes(good)
        broker.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: broker.log().count("Reloading config") > reloads + 1, 5, what="reload")
    time.sleep(0.5)
    with device(broker, CAM_B.device_id) as b:
        assert connected(b)
