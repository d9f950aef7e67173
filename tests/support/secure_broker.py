"""A private Mosquitto set up the way docs/broker-security.md says: TLS, password file, ACL, no anonymous.

Certificates come from the project's own ``ioc pki`` code and accounts from ``ioc devices``' code, so the
tests check that a real broker accepts what those write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from ingest.tls import TlsOptions
from ioc.provision import accounts, dynsec, pki
from tests.support.services import BROKER_LIMITS, MOSQUITTO, free_port, port_open, wait_until

SERVICES = ("ioc-ingest", "ioc-live", "ioc-brain", "ioc-simulator")
#: Where the eclipse-mosquitto image keeps the dynamic-security plugin, and where the shipped config keeps its file.
IMAGE_PLUGIN = "/usr/lib/mosquitto_dynamic_security.so"
DYNSEC_FILE = "/mosquitto/dynsec/dynamic-security.json"


def dynsec_plugin() -> str:
    """This machine's dynamic-security plugin (Debian's path, else the image's)."""
    for path in ("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
                 "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so", IMAGE_PLUGIN):
        if Path(path).exists():
            return path
    return IMAGE_PLUGIN


@dataclass
class SecureBroker:
    """What a test needs to talk to the broker."""

    root: Path
    tls_port: int
    plain_port: int | None
    pki: pki.Pki
    passwd: Path
    acl: Path
    proc: subprocess.Popen[bytes]
    passwords: dict[str, str] = field(default_factory=dict)  # username -> password

    @property
    def tls(self) -> TlsOptions:
        return TlsOptions(str(self.pki.ca_cert))

    def url(self, user: str, host: str = "localhost") -> str:
        return f"mqtts://{user}:{self.passwords[user]}@{host}:{self.tls_port}"

    def add_devices(self, devices: list[accounts.Device]) -> None:
        """Provision more devices and reload the broker (SIGHUP), as an operator would."""
        result = accounts.provision(devices, self.passwd, self.acl)
        self.passwords.update({dev.device_id: pw for dev, pw in result.created})
        _broker_owns(self.root)
        self.proc.send_signal(signal.SIGHUP)


def _broker_owns(root: Path) -> None:
    # Mosquitto started as root drops to the 'mosquitto' account and then reads the password/ACL/key files.
    if os.geteuid() == 0 and shutil.which("mosquitto"):
        with contextlib.suppress(KeyError, LookupError, OSError):
            for path in [root, *root.rglob("*")]:
                shutil.chown(path, "mosquitto")


@contextlib.contextmanager
def secure_mosquitto(devices: list[accounts.Device], plaintext: bool = False,
                     keep_log: Path | None = None) -> Iterator[SecureBroker]:
    """Start a TLS (+ optional plaintext) broker on free ports with accounts for ``devices`` and the services.

    ``keep_log``: copy the broker's verbose log there when it stops (for test artifacts).
    """
    root = Path(tempfile.mkdtemp(prefix="ioc-secure-mqtt-"))
    try:
        store, _ = pki.init_pki(root / "certs", ["localhost", "127.0.0.1"])
        passwd, acl = root / "passwd", root / "acl"
        passwords = accounts.provision_services(SERVICES, passwd, acl)
        result = accounts.provision(devices, passwd, acl)
        passwords.update({dev.device_id: pw for dev, pw in result.created})
        tls_port = free_port()
        plain_port = free_port() if plaintext else None
        conf = root / "mosquitto.conf"
        lines = ["per_listener_settings false", "allow_anonymous false", f"password_file {passwd}",
                 f"acl_file {acl}", "persistence false", BROKER_LIMITS,
                 f"listener {tls_port} 127.0.0.1", f"cafile {store.ca_cert}", f"certfile {store.server_cert}",
                 f"keyfile {store.server_key}", "tls_version tlsv1.2"]
        if plain_port:
            lines.append(f"listener {plain_port} 127.0.0.1")
        conf.write_text("\n".join(lines) + "\n")
        _broker_owns(root)
        with (root / "mosquitto.log").open("wb") as log:
            proc = subprocess.Popen([MOSQUITTO, "-c", str(conf), "-v"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: port_open(tls_port), 10, what="secure mosquitto")
            yield SecureBroker(root, tls_port, plain_port, store, passwd, acl, proc, passwords)
        finally:
            proc.terminate()
            proc.wait(5)
            if keep_log is not None:
                keep_log.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(root / "mosquitto.log", keep_log)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Client:
    """A small synchronous paho client for assertions: connect result, publish results, received messages."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None,
                 tls: TlsOptions | None = None, will_topic: str | None = None, host: str = "localhost") -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:10]}",
                                  protocol=mqtt.MQTTv5)
        if user:
            self.client.username_pw_set(user, password)
        if tls is not None:
            self.client.tls_set_context(tls.context())
        if will_topic:
            self.client.will_set(will_topic, b'{"state":"offline"}', qos=1)
        self.connack: ReasonCode | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.granted: list[ReasonCode] = []
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: ReasonCode,
                    props: object = None) -> None:
        self.connack = rc
        self.connected.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, rcs: list[ReasonCode],
                      props: object = None) -> None:
        self.granted = list(rcs)
        self.subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def connect(self, timeout: float = 10.0) -> ReasonCode | None:
        """Connect; the CONNACK reason (None: no CONNACK, e.g. the TLS handshake or the connection failed)."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except (OSError, ssl.SSLError):
            return None
        self.client.loop_start()
        self.connected.wait(timeout)
        return self.connack

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(10), "no SUBACK"
        return self.granted

    def publish(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        return info

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.messages]

    def wait_for(self, topic: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if topic in self.topics():
                return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


@dataclass
class ShippedBroker:
    """deploy/mosquitto/mosquitto.conf + acl running with only paths and ports changed."""

    root: Path
    device_port: int  # the published listener (8883 in compose)
    service_port: int  # the services' listener (8884 in compose; the device port under a one-listener config)
    plain_port: int  # the loopback listener of the health check (1883 in compose)
    passwords: dict[str, str]
    pki: pki.Pki
    proc: subprocess.Popen[bytes]

    @property
    def tls(self) -> TlsOptions:
        return TlsOptions(str(self.pki.ca_cert))

    def log(self) -> str:
        path = self.root / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def shipped_mosquitto(devices: list[accounts.Device]) -> Iterator[ShippedBroker]:
    """Start the shipped broker config on free ports in a temporary folder, with accounts made by this code: the
    service accounts in the file the config gives the service listener (passwd-services), devices in the
    dynamic-security plugin's file (in passwd under a config without the plugin); ``passwords['ioc-admin']`` is the
    plugin's admin account."""
    shipped = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
    root = Path(tempfile.mkdtemp(prefix="ioc-shipped-mqtt-"))
    root.chmod(0o755)
    try:
        conf = (shipped / "mosquitto.conf").read_text()
        store, _ = pki.init_pki(root / "certs", ["localhost", "127.0.0.1"])
        acl = root / "acl"
        acl.write_text((shipped / "acl").read_text())
        service_file = root / ("passwd-services" if "/passwd-services" in conf else "passwd")
        passwords = accounts.provision_services(SERVICES, service_file, acl)
        if DYNSEC_FILE in conf:  # devices in the dynamic-security plugin, its admin account too
            (root / "dynsec").mkdir()
            passwords[dynsec.ADMIN] = dynsec.init_file(root / "dynsec" / "dynamic-security.json") or ""
            created = dynsec.provision_file(devices, root / "dynsec" / "dynamic-security.json").created
        else:
            created = accounts.provision(devices, root / "passwd", acl).created
        passwords.update({d.device_id: p for d, p in created})
        (root / "passwd").touch()  # no devices yet: an empty file (Mosquitto refuses to start without it)
        device_port, plain_port = free_port(), free_port()
        service_port = free_port() if "listener 8884" in conf else device_port
        conf = (conf.replace("/mosquitto/config/certs/", f"{root}/certs/").replace("/mosquitto/config/", f"{root}/")
                .replace("/mosquitto/dynsec/", f"{root}/dynsec/").replace(IMAGE_PLUGIN, dynsec_plugin())
                .replace("/mosquitto/data/", f"{root}/data/").replace("listener 8883", f"listener {device_port}")
                .replace("listener 8884", f"listener {service_port}")
                .replace("listener 1883 127.0.0.1", f"listener {plain_port} 127.0.0.1")
                .replace("log_dest stdout", f"log_dest file {root}/mosquitto.log"))
        (root / "data").mkdir()
        (root / "mosquitto.conf").write_text(conf)
        _broker_owns(root)
        proc = subprocess.Popen([MOSQUITTO, "-c", str(root / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: all(port_open(p) for p in (device_port, service_port, plain_port)), 10,
                       what="shipped broker")
            yield ShippedBroker(root, device_port, service_port, plain_port, passwords, store, proc)
        finally:
            proc.terminate()
            proc.wait(5)
    finally:
        shutil.rmtree(root, ignore_errors=True)
