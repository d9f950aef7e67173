"""Cluster tests' helpers: ``ioc serve --role ...`` children, the lease as the database sees it, notifications."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg

from tests.support.services import BROKER_LIMITS, MOSQUITTO, ServiceProcess, free_port, port_open


def cluster_env(database_url: str, mqtt_port: int, lease: str, **extra: str) -> dict[str, str]:
    """Environment for one cluster process: its own lease name and brain session, fast lease timing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOC_")}
    env.update({
        "IOC_DATABASE_URL": database_url,
        "IOC_MQTT_URL": f"mqtt://127.0.0.1:{mqtt_port}",
        "IOC_CLUSTER__LEASE_NAME": lease,
        "IOC_CLUSTER__BRAIN_CLIENT_ID": f"ioc-brain-{lease}",
        "IOC_CLUSTER__BRAIN_SESSION_EXPIRY_S": "300",
        "IOC_CLUSTER__HEARTBEAT_S": "1",
        "IOC_ANALYTICS__CAMERA_PROCESSES": "1",
        "IOC_ALERTS__TICK_S": "0.5",
        "IOC_LOG_LEVEL": "INFO",
    })
    env.update(extra)
    return env


class RoleProcess(ServiceProcess):
    """``ioc serve --role ROLE`` as a child process on a free port (up when /healthz answers: a standby is
    never "ready" in the sense of /readyz)."""

    ready_path = "/healthz"
    # Its own process group: a SIGKILLed brain's camera pool worker (and multiprocessing's resource tracker) is
    # reparented to init and would outlive the test; teardown kills the whole group (stop()).
    new_session = True

    def __init__(self, env: dict[str, str], role: str, log: Path, token: str) -> None:
        super().__init__(env, log, ["serve", "--role", role])
        self.role, self.token = role, token

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    def get(self, path: str) -> Any:
        status, doc = self.request("GET", path)
        assert status == 200, (status, doc)
        return doc

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL the process alone, as a crash would (its children are left to the teardown's stop())."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        """Stop it (SIGTERM), then SIGKILL whatever is left of its process group, even after kill()."""
        super().stop()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # nothing left: the group is gone
                os.killpg(self.proc.pid, signal.SIGKILL)

    def leftovers(self) -> list[str]:
        """Processes still alive in its process group (zombies aside: reaped by init), as "pid command" lines."""
        if self.proc is None:
            return []
        return [f"{pid} {cmd}" for pid, cmd in group_members(self.proc.pid)]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def group_members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live (not zombie) processes of process group ``pgid``, read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ')'
            state, _ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if int(pgrp) == pgid and state != "Z":
            found.append((int(stat.parent.name), cmd))
    return found


def unique_lease() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def wait_for(predicate: Any, timeout: float, interval: float = 0.1, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; return that (TimeoutError otherwise)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def db_fetch(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    """Run one query on a fresh connection (from synchronous test code)."""
    import asyncio

    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(go())


def lease(dsn: str, name: str) -> dict[str, Any]:
    rows = db_fetch(dsn, "SELECT holder, epoch, expires_at > now() AS valid FROM cluster_lease WHERE name = $1", name)
    return rows[0] if rows else {"holder": None, "epoch": 0, "valid": False}


class PersistentBroker:
    """A private Mosquitto with persistence, restartable on the same port."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        root.chmod(0o777)  # started as root, mosquitto drops to its own user: it must be able to save its state
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {root}/\nautosave_interval 1\n{BROKER_LIMITS}")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_for(lambda: port_open(self.port), 10, what="mosquitto")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # saves its persistence file on the way out
            self.proc.wait(10)


@contextlib.contextmanager
def persistent_broker() -> Iterator[PersistentBroker]:
    with tempfile.TemporaryDirectory(prefix="ioc-mqtt-ha-") as tmp:
        broker = PersistentBroker(Path(tmp))
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


class WebhookReceiver:
    """A webhook receiver on a free port: every delivery as (webhook-id, reason, incident id)."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, str, int]] = []
        lock = threading.Lock()
        deliveries = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with lock:
                    deliveries.append((self.headers.get("webhook-id", ""), str(body.get("reason")),
                                       int((body.get("incident") or {}).get("id") or 0)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class TelemetryStream:
    """Telemetry from ``devices`` devices, 4 rounds a second, QoS 1, in a thread that reconnects through broker
    restarts; ``acked`` counts the messages the broker acknowledged."""

    def __init__(self, port: int, prefix: str, devices: int = 5) -> None:
        self.port, self.prefix, self.devices = port, prefix, devices
        self.acked = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TelemetryStream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop publishing (waits for the round on its way); ``acked`` is final afterwards."""
        self.stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        from tests.support.mqtt import Publisher, iso

        pub = None
        i = 0
        while not self.stop.is_set():
            try:
                if pub is None:
                    pub = Publisher(self.port)
                for d in range(self.devices):
                    pub.publish(f"ioc/v1/traffic/{self.prefix}-{d}/telemetry",
                                {"ts": iso(time.time()), "seq": i, "metrics": {"speed_kmh": 40.0 + d}})
                pub.wait_all(10)
                self.acked += self.devices
                i += 1
            except (OSError, TimeoutError, ValueError, RuntimeError):  # the broker restarting
                with contextlib.suppress(Exception):
                    pub.close() if pub else None
                pub = None
                time.sleep(0.5)
                continue
            time.sleep(0.25)
        if pub is not None:
            pub.close()

    def stored(self, dsn: str) -> dict[str, int]:
        """Rows stored for the stream's devices: ``n`` in all, ``d`` distinct (device, ts)."""
        return db_fetch(dsn, "SELECT count(*) AS n, count(DISTINCT (device_id, ts)) AS d FROM telemetry "
                        "WHERE device_id LIKE $1", self.prefix + "-%")[0]
