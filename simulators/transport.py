"""Getting the fleet's messages to the broker: pooled connections, or one connection (and will) per device.

Every publish is QoS 1. A connection holds at most ``max_outstanding`` unacknowledged messages; beyond
that the generator waits, so memory stays bounded whatever the broker's speed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ingest import contract
from ingest.tls import TlsOptions, check_url, default_port, url_uses_tls
from simulators.fleet import WILL_PAYLOAD, Control, Message

logger = logging.getLogger(__name__)


class TransportError(RuntimeError):
    """The broker could not be reached or refused the connection."""


@dataclass(slots=True)
class Broker:
    """Where to connect, parsed from ``mqtt://[user:pass@]host[:port]`` (or ``mqtts://`` for TLS)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: TlsOptions | None = None

    @classmethod
    def from_url(cls, url: str, tls: TlsOptions | None = None) -> Broker:
        """Parse a broker URL (schemes mqtt://, tcp://, mqtts://); ``tls`` holds the files for mqtts://."""
        parts = urlsplit(check_url(url))
        use_tls = (tls or TlsOptions()) if url_uses_tls(url) else None
        return cls(parts.hostname or "", default_port(url), parts.username, parts.password, use_tls)


@dataclass(slots=True)
class Counters:
    """What a transport has done so far."""

    sent: int = 0
    acked: int = 0
    bytes: int = 0
    values: int = 0
    snapshots: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)


class Transport:
    """Publishes fleet output; ``has_wills`` says whether device deaths can be left to MQTT last wills."""

    has_wills = False

    def __init__(self) -> None:
        self.counters = Counters()

    def connect(self, device_ids: list[str], kinds: dict[str, str]) -> None:
        """Open the connections (raise ``TransportError`` if the broker refuses)."""
        raise NotImplementedError

    def _publish(self, msg: Message, stop: threading.Event | None) -> None:
        raise NotImplementedError

    def control(self, ctl: Control) -> None:
        """Connection-level action (only meaningful with per-device connections)."""

    def flush(self, timeout: float) -> bool:
        """Wait until the broker acknowledged everything sent; False on timeout."""
        return True

    def close(self) -> None:
        """Disconnect cleanly (no wills are triggered)."""

    def send(self, out: Message | Control, stop: threading.Event | None = None) -> None:
        """Publish a message or apply a control action, counting it."""
        if isinstance(out, Control):
            self.control(out)
            return
        self._publish(out, stop)
        c = self.counters
        c.sent += 1
        c.bytes += len(out.payload)
        c.values += out.values
        c.by_channel[out.channel] = c.by_channel.get(out.channel, 0) + 1
        if out.channel == "snapshot":
            c.snapshots += 1


class MemoryTransport(Transport):
    """Keeps everything in a list (tests, dry runs)."""

    def __init__(self, has_wills: bool = False) -> None:
        super().__init__()
        self.has_wills = has_wills
        self.messages: list[Message] = []
        self.controls: list[Control] = []

    def connect(self, device_ids: list[str], kinds: dict[str, str]) -> None:
        """Nothing to open."""

    def _publish(self, msg: Message, stop: threading.Event | None) -> None:
        self.messages.append(msg)
        self.counters.acked += 1

    def control(self, ctl: Control) -> None:
        """Record the action."""
        self.controls.append(ctl)


class _Conn:
    """One paho client on its own network thread, with acknowledgement accounting."""

    def __init__(self, broker: Broker, client_id: str, counters: Counters, max_outstanding: int,
                 will: tuple[str, bytes] | None = None, retain_expiry_s: int | None = None) -> None:
        self.broker, self.client_id, self.counters = broker, client_id, counters
        self.max_outstanding = max_outstanding
        self.cond = threading.Condition()
        self.outstanding = 0
        self.connected = threading.Event()
        self.closing = False
        self.refused: str | None = None
        self.retain_props: Properties | None = None
        if retain_expiry_s:
            # Lets test runs leave no retained status behind on a shared broker.
            self.retain_props = Properties(PacketTypes.PUBLISH)
            self.retain_props.MessageExpiryInterval = retain_expiry_s
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.max_inflight_messages_set(min(1000, max_outstanding))
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 30)
        if broker.username:
            c.username_pw_set(broker.username, broker.password)
        if broker.tls is not None:
            c.tls_set_context(broker.tls.context())
        if will:
            props = None
            if retain_expiry_s:
                props = Properties(PacketTypes.WILLMESSAGE)
                props.MessageExpiryInterval = retain_expiry_s
            c.will_set(will[0], will[1], qos=1, retain=True, properties=props)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self.client = c

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if rc.is_failure:
            self.refused = str(rc)
            logger.error("broker refused %s: %s", self.client_id, rc)
            return
        self.connected.set()  # only after a successful CONNACK

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
        if self.connected.is_set() and not self.closing:
            logger.warning("connection %s lost (%s); paho reconnects", self.client_id, rc)
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any = None, props: Any = None) -> None:
        with self.cond:
            self.outstanding -= 1
            self.counters.acked += 1
            self.cond.notify_all()

    def open(self, timeout: float = 10.0) -> None:
        try:
            self.client.connect(self.broker.host, self.broker.port, keepalive=30)
        except OSError as err:
            raise TransportError(f"cannot reach broker {self.broker.host}:{self.broker.port}: {err}") from err
        self.client.loop_start()
        if not self.connected.wait(timeout) or self.refused:
            self.client.loop_stop()
            raise TransportError(f"broker did not accept {self.client_id}: {self.refused or 'timeout'}")

    def publish(self, msg: Message, stop: threading.Event | None) -> None:
        with self.cond:
            while self.outstanding >= self.max_outstanding:
                if stop is not None and stop.is_set() and not self.connected.is_set():
                    return  # shutting down while the broker is away: drop rather than hang
                self.cond.wait(0.2)
            self.outstanding += 1
        props = self.retain_props if msg.retain else None
        self.client.publish(msg.topic, msg.payload, qos=1, retain=msg.retain, properties=props)

    def flush(self, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: self.outstanding <= 0, timeout)

    def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT, as a power cut would: the broker sends the will."""
        self.closing = True
        # reconnect_on_failure is a constructor option with no setter; clearing it stops paho reconnecting.
        self.client._reconnect_on_failure = False
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.client.loop_stop()
        with self.cond:
            self.outstanding = 0  # unacked messages died with the connection
            self.cond.notify_all()

    def close(self) -> None:
        self.closing = True
        self.client.disconnect()
        self.client.loop_stop()


class PooledMqtt(Transport):
    """A few connections carry many devices; a device always uses the same one, so its messages stay ordered.

    Connections carry no will (one will cannot speak for many devices): device deaths are published by
    the fleet as explicit retained ``offline`` statuses.
    """

    has_wills = False

    def __init__(self, broker: Broker, connections: int = 2, max_outstanding: int = 2000,
                 retain_expiry_s: int | None = None, name: str = "sim") -> None:
        super().__init__()
        token = uuid.uuid4().hex[:8]
        self.conns = [_Conn(broker, f"{name}-{token}-{i}", self.counters, max_outstanding,
                            retain_expiry_s=retain_expiry_s) for i in range(max(1, connections))]

    def connect(self, device_ids: list[str], kinds: dict[str, str]) -> None:
        """Open every pooled connection."""
        for c in self.conns:
            c.open()

    def _publish(self, msg: Message, stop: threading.Event | None) -> None:
        self.conns[zlib.crc32(msg.device_id.encode()) % len(self.conns)].publish(msg, stop)

    def flush(self, timeout: float) -> bool:
        """Wait for all acknowledgements."""
        return all(c.flush(timeout) for c in self.conns)

    def close(self) -> None:
        """Disconnect every connection."""
        for c in self.conns:
            c.close()


class PerDeviceMqtt(Transport):
    """One connection per device, each with its own retained last will: realistic, for small fleets."""

    has_wills = True

    def __init__(self, broker: Broker, max_outstanding: int = 200, retain_expiry_s: int | None = None) -> None:
        super().__init__()
        self.broker, self.max_outstanding, self.retain_expiry_s = broker, max_outstanding, retain_expiry_s
        self.token = uuid.uuid4().hex[:6]
        self.kinds: dict[str, str] = {}
        self.conns: dict[str, _Conn] = {}

    def _new(self, device_id: str) -> _Conn:
        will = (contract.topic_for(self.kinds[device_id], device_id, "status"), WILL_PAYLOAD)
        return _Conn(self.broker, f"{device_id}-{self.token}", self.counters, self.max_outstanding, will,
                     self.retain_expiry_s)

    def connect(self, device_ids: list[str], kinds: dict[str, str]) -> None:
        """Open one connection per device."""
        if len(device_ids) > 2000:
            logger.warning("%d per-device connections: use the pooled mode for large fleets", len(device_ids))
        self.kinds = dict(kinds)
        for dev_id in device_ids:
            conn = self._new(dev_id)
            conn.open()
            self.conns[dev_id] = conn

    def _publish(self, msg: Message, stop: threading.Event | None) -> None:
        self.conns[msg.device_id].publish(msg, stop)

    def control(self, ctl: Control) -> None:
        """Kill (will fires) or revive (fresh connection, same will) a device's connection."""
        if ctl.action == "kill":
            self.conns[ctl.device_id].kill()
        elif ctl.action == "revive":
            conn = self._new(ctl.device_id)
            try:
                conn.open()
            except TransportError as err:
                logger.error("could not reconnect %s: %s", ctl.device_id, err)
            self.conns[ctl.device_id] = conn

    def flush(self, timeout: float) -> bool:
        """Wait for all acknowledgements."""
        return all(c.flush(timeout) for c in self.conns.values())

    def close(self) -> None:
        """Disconnect every device cleanly (no wills)."""
        for c in self.conns.values():
            if c.connected.is_set():
                c.close()
            else:
                c.client.loop_stop()
