"""An MQTT v5 session for paho-mqtt 2.x driven by the asyncio event loop.

Why not paho's own thread: flow control. When the database is slow or down the worker must stop taking
messages beyond its bound; we do that by no longer reading the socket, so TCP back-pressure leaves the
messages queued at the broker. (Mosquitto 2.0.11 does not reliably honour the client's Receive Maximum,
so the broker cannot be trusted to enforce the bound.)

Acks are manual and tagged with the connection *generation*: after a reconnect the broker redelivers
whatever was not acked, and a packet id from the old connection must never be acked on the new one.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ingest import paho_speedups
from ingest.backoff import Backoff
from ingest.metrics import HANDLER_ERRORS, RateLimitedLog
from ingest.tls import TlsOptions

logger = logging.getLogger(__name__)
errors = RateLimitedLog(logger)


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Connection parameters of one session."""

    host: str
    port: int
    client_id: str
    subscriptions: tuple[str, ...]
    qos: int = 1
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    clean_start: bool = False
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    username: str | None = None
    password: str | None = None
    receive_maximum: int = 1000
    tls: TlsOptions | None = None  # set: MQTT over TLS (mqtts://)
    # Packets handled per turn of the event loop before the loop's other work runs (keeps the API responsive).
    packets_per_turn: int = 1000
    # Filters a resumed session may still hold from an older configuration (a share group since renamed): dropped
    # after the new SUBSCRIBE, else the broker keeps feeding the session from both and every message comes twice.
    unsubscribe: tuple[str, ...] = ()


MessageHandler = Callable[[mqtt.MQTTMessage, int], None]


class _BufferedSocket:
    """Socket proxy that reads 64 KiB at a time.

    paho reads each packet with three or more tiny ``recv`` calls (command byte, length bytes, body);
    serving those from a userspace buffer removes most syscalls on the receive path.
    """

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos < len(self._buf):
            chunk = self._buf[self._pos:self._pos + size]
            self._pos += len(chunk)
            return chunk
        data: bytes = self._sock.recv(65536)  # BlockingIOError when empty: paho maps it to "again"
        if len(data) <= size:
            return data
        self._buf, self._pos = data, size
        return data[:size]

    def buffered(self) -> bool:
        return self._pos < len(self._buf)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class MqttSession:
    """A persistent, self-reconnecting MQTT v5 subscriber session with manual acks.

    Args:
        options: where to connect and what to subscribe to.
        on_message: called on the event loop for each message with the connection generation; the
            caller must later :meth:`ack` it (QoS 1) with that generation.
        on_connection_change: called with True after a successful CONNACK + subscribe, False on loss.
    """

    def __init__(self, options: SessionOptions, on_message: MessageHandler,
                 on_connection_change: Callable[[bool], None] | None = None) -> None:
        self.options = options
        self._on_message_cb = on_message
        self._on_change = on_connection_change
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        paho_speedups.install()
        self._client = self._make_client()
        self._sock: _BufferedSocket | None = None
        self._fd = -1
        self._reading = True
        self._again = False  # a read is queued for the next turn of the loop (the budget was spent)
        self._generation = 0
        self._connected = asyncio.Event()
        # Set at the SUBACK of this connection: until then a message published elsewhere may reach the broker
        # before our SUBSCRIBE, and a new session never gets it (CONNACK alone does not mean subscribed).
        self._subscribed = asyncio.Event()
        self._subacks_due = 0  # SUBACKs this connection still waits for (one SUBSCRIBE per filter)
        self._lost = asyncio.Event()
        self._stopping = False
        self._was_stable = False  # set 10 s after a connect that held; resets the reconnect backoff
        self.reconnects = 0
        self.messages_in = 0  # messages handed to on_message (progress, for health checks)
        self.refused_subscriptions: list[str] = []  # reason codes of a refused SUBACK (health checks)

    @property
    def generation(self) -> int:
        """Increments on every successful connect."""
        return self._generation

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the session is connected and the broker has answered its SUBSCRIBE (SUBACK), refused or not."""
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    def ack(self, mid: int, generation: int, qos: int = 1) -> bool:
        """Acknowledge a message if it came over the current connection; False if it is stale."""
        if qos == 0 or generation != self._generation or not self._connected.is_set():
            return False
        self._client.ack(mid, qos)
        return True

    def pause_reading(self, why: str = "back-pressure") -> None:
        """Stop reading the socket: the broker keeps further messages queued."""
        if self._reading:
            self._reading = False
            if self._sock is not None and self._loop is not None:
                self._loop.remove_reader(self._fd)
            logger.log(logging.INFO if why == "shutdown" else logging.WARNING, "MQTT reading paused (%s)", why)

    def resume_reading(self) -> None:
        """Resume reading after :meth:`pause_reading`."""
        if not self._reading:
            self._reading = True
            if self._sock is not None and self._loop is not None:
                self._loop.add_reader(self._fd, self._on_readable)
                self._loop.call_soon(self._on_readable)  # bytes may wait in our buffer, not the socket
            logger.info("MQTT reading resumed")

    async def run(self) -> None:
        """Connect, and reconnect with exponential backoff and jitter, until :meth:`stop`."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        backoff = Backoff(self.options.reconnect_min_s, self.options.reconnect_max_s)
        misc = asyncio.create_task(self._misc_loop())
        try:
            while not self._stopping:
                self._lost.clear()
                try:
                    await self._loop.run_in_executor(None, self._connect_blocking)
                    await self._lost.wait()
                except OSError as err:
                    logger.warning("MQTT connect to %s:%s failed: %s", self.options.host, self.options.port, err)
                if self._stopping:
                    break
                # A connection that stayed up resets the backoff; a flapping one keeps growing it.
                if self._was_stable:
                    backoff.reset()
                self._was_stable = False
                self.reconnects += 1
                await backoff.sleep()
        finally:
            misc.cancel()

    def reconnect(self, why: str) -> None:
        """Drop the connection now and connect again (:meth:`run` does, after the shortest backoff).

        The broker keeps the session (a clean DISCONNECT) and sends every message it holds unacked again, marked
        DUP. Nothing read on the old connection is acked any more: its generation is stale from here on. For a
        consumer whose stage dropped input it had not acked (``IngestWorker``'s ack gate). Not connected: nothing
        to do (the next connection gets the unacked messages anyway).
        """
        if self._sock is None or not self._connected.is_set():
            return
        logger.warning("MQTT reconnecting so the broker sends the unacked messages again (%s)", why)
        self._connected.clear()  # ack() refuses the old connection's messages from now on, before any write
        self._was_stable = True  # a reconnection chosen here, not a flapping link: no growing backoff
        self._client.disconnect()
        self._flush_writes()

    async def stop(self, session_expiry_s: int | None = None) -> None:
        """Disconnect cleanly (the broker keeps the session and unacked messages); ``session_expiry_s``: for how
        long from now, when not as long as the connection asked for (MQTT 5 sets it at the DISCONNECT)."""
        self._stopping = True
        if self._sock is not None:
            props = None
            if session_expiry_s is not None and self.options.session_expiry_s > 0:  # 0 at CONNECT may not grow
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = session_expiry_s
            self._client.disconnect(properties=props)
            self._flush_writes()
        self._lost.set()

    # --- paho plumbing -------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        opts = self.options
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=opts.client_id,
                             protocol=mqtt.MQTTv5)
        client.manual_ack_set(True)
        # A handler error must never escape into paho's reader: paho resets its packet state only after a
        # packet was handled, so an escaping exception makes it handle the same packet again and again.
        # Our handler catches everything itself; this is the second fence.
        client.suppress_exceptions = True
        if opts.username:
            client.username_pw_set(opts.username, opts.password)
        if opts.tls is not None:
            # The handshake runs inside connect() (executor thread) before on_socket_open; the reader below
            # drains until the TLS layer says "want read", so no decrypted bytes are left waiting unseen.
            client.tls_set_context(opts.tls.context())
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    def _connect_blocking(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.options.session_expiry_s
        props.ReceiveMaximum = self.options.receive_maximum
        self._client.connect(self.options.host, self.options.port, keepalive=self.options.keepalive_s,
                             clean_start=self.options.clean_start, properties=props)

    def _threadsafe(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Runs in the connecting executor thread, right after paho created the socket and before it
        # sends CONNECT: swap in the buffered proxy, then register on the loop's thread.
        wrapped = _BufferedSocket(sock)
        client._sock = wrapped
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._threadsafe(self._attach, wrapped)

    def _attach(self, sock: _BufferedSocket) -> None:
        assert self._loop is not None
        self._sock, self._fd = sock, sock.fileno()
        if self._reading:
            self._loop.add_reader(self._fd, self._on_readable)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._sock, self._fd = None, -1

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and threading.get_ident() == self._loop_thread:
            self._add_writer(sock)  # the usual case (acks): no thread hop needed
        else:
            self._threadsafe(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        if self._loop is not None and self._sock is sock and self._fd >= 0:
            self._loop.add_writer(self._fd, self._flush_writes)

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_writer(self._fd)

    def _on_readable(self) -> None:
        if self._again:
            return  # the read queued when the last budget was spent runs this turn: one budget per turn
        self._read_budget()

    def _read_again(self) -> None:
        self._again = False
        self._read_budget()

    def _read_budget(self) -> None:
        # paho's loop_read() handles one packet per call; drain what is there instead, up to a budget per turn
        # of the loop. (Both the socket's readiness and the queued read used to run in one turn, two budgets:
        # a live replica with a backlog then handed each screen 2,000 frames between two sends, its whole
        # queue, and every screen was marked behind.)
        client = self._client
        for _ in range(self.options.packets_per_turn):
            if not self._reading or self._sock is None:
                return
            try:
                rc = client._packet_read()
            except Exception:  # paho itself failed on a packet: drop the link (reconnect resets paho's reader)
                HANDLER_ERRORS.labels("mqtt_reader").inc()
                logger.exception("MQTT reader failed; dropping the connection to start clean")
                client._loop_rc_handle(mqtt.MQTT_ERR_PROTOCOL)
                return
            if rc == mqtt.MQTT_ERR_AGAIN:
                return
            if rc != mqtt.MQTT_ERR_SUCCESS:
                client._loop_rc_handle(rc)
                return
        if self._loop is not None:
            self._again = True
            self._loop.call_soon(self._read_again)  # budget spent; data may remain in our buffer

    def _flush_writes(self) -> None:
        self._client.loop_write()

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self._sock is not None:
                self._client.loop_misc()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        if reason.is_failure:
            # Refused (bad credentials, server busy...): never mark connected; run() retries with backoff.
            logger.error("MQTT broker refused connection: %s", reason)
            self._was_stable = False
            return
        self._generation += 1
        self._was_stable = False
        self._subscribed.clear()
        self._subacks_due = len(self.options.subscriptions)
        if not self._subacks_due:
            self._subscribed.set()
        for topic in self.options.subscriptions:
            client.subscribe(topic, qos=self.options.qos)
        if flags.session_present and self.options.unsubscribe:
            client.unsubscribe(list(self.options.unsubscribe))  # what was queued under them stays in the session
        logger.info("MQTT connected to %s:%s as %s (session present: %s, generation %d)",
                    self.options.host, self.options.port, self.options.client_id,
                    flags.session_present, self._generation)
        self._connected.set()
        assert self._loop is not None
        self._loop.call_later(10.0, self._mark_stable, self._generation)
        if self._on_change:
            self._on_change(True)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Any) -> None:
        # A subscription the broker refuses (an ACL, a share group the account may not join) leaves a session
        # that is connected and receives nothing: say so loudly, and let health checks see it.
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        self.refused_subscriptions = refused
        self._subacks_due -= 1
        if refused:
            logger.error("MQTT broker refused the subscription %s: %s", self.options.subscriptions, ", ".join(refused))
        elif self._subacks_due <= 0:
            # Only from here on does the broker route messages to this session (a new session, or a shared
            # subscription Mosquitto 2.0 did not restore after its restart): supervisors and tests wait for it.
            logger.info("MQTT subscribed to %s (generation %d)", ", ".join(self.options.subscriptions),
                        self._generation)
        if self._subacks_due <= 0:
            self._subscribed.set()

    def _mark_stable(self, generation: int) -> None:
        self._was_stable = generation == self._generation and self._connected.is_set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        self._lost.set()
        if was:
            logger.warning("MQTT connection lost: %s", reason)
            if self._on_change:
                self._on_change(False)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages_in += 1
        try:
            self._on_message_cb(message, self._generation)
        except Exception:  # the handlers catch their own errors; this only guards paho's reader
            HANDLER_ERRORS.labels("mqtt_handler").inc()
            errors.log("MQTT message handler raised (message %s on %r)", message.mid, message._topic[:200])
