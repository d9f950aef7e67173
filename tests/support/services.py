"""Real services for integration tests: private Mosquitto and PostgreSQL instances, ingest subprocesses.

Everything listens on 127.0.0.1 only; readiness is polled, never assumed after a sleep.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

PG_BIN = Path(os.environ.get("IOC_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

#: The queue limits that "nothing acknowledged is lost" depends on; deploy/mosquitto/mosquitto.conf has the same.
BROKER_LIMITS = """\
max_queued_messages 10000000
max_queued_bytes 4294967296
max_inflight_messages 0
persistent_client_expiration 14d
"""


#: Listening ports for test services come from below Linux's ephemeral range (32768-60999 by default).
#: A port the kernel hands out for bind(0) is in that range, and between our check and the service's own
#: bind any outgoing connection (to PostgreSQL, Mosquitto, ...) may take it as its source port: an API
#: replica then failed with "address already in use". Ports below the range are never used that way.
_TEST_PORTS = range(20000, 32768)


def _worker_ports() -> range:
    """This pytest-xdist worker's own slice of ``_TEST_PORTS`` (all of it outside xdist): two workers drawing from
    one range could both pick a port between one's check and its service's bind."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(worker[2:]) < int(count)):
        return _TEST_PORTS
    size = len(_TEST_PORTS) // int(count)
    start = _TEST_PORTS.start + int(worker[2:]) * size
    return range(start, start + size)


def free_port() -> int:
    """A port on 127.0.0.1 nothing listens on, outside the ephemeral range (see ``_TEST_PORTS``)."""
    ports = _worker_ports()
    for _ in range(200):
        port = random.choice(ports)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for a test service")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "") -> None:
    """Poll ``predicate`` until it is true or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@contextlib.contextmanager
def private_mosquitto(limits: str = BROKER_LIMITS) -> Iterator[int]:
    """A Mosquitto broker with the project's queue limits (or ``limits``: "" for Mosquitto's defaults, as on the
    shared test broker) on a free port; yields the port."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ioc-mqtt-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{limits}")
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: port_open(port), 10, what="mosquitto")
            yield port
        finally:
            proc.terminate()
            proc.wait(5)


class PrivatePostgres:
    """A throw-away PostgreSQL cluster that a test may stop and start."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *cmd: str) -> None:
        runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*runner, *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                          "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l",
                          str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """Start a private cluster (initdb + start); stopped and deleted afterwards."""
    root = Path(tempfile.mkdtemp(prefix="ioc-pg-", dir="/tmp"))
    pg = PrivatePostgres(root)
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


class IngestProcess:
    """``ioc ingest`` as a child process, so tests can SIGKILL it like a crash would."""

    def __init__(self, env: dict[str, str], client_id: str, log: Path, python_args: tuple[str, ...] = ()) -> None:
        self.python_args = python_args  # e.g. ("-m", "cProfile", "-o", "worker.prof") for profiling runs
        self.env = env
        self.client_id = client_id
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> IngestProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, wait: bool = True) -> None:
        """Start the worker; with ``wait``, return once the broker has answered its SUBSCRIBE.

        Until then the broker routes nothing to it: a fresh share group does not exist yet, so a reading
        published before the SUBACK is acknowledged to its device and dropped ("no matching subscribers").
        """
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            cmd = [sys.executable, *self.python_args, "-m", "ioc.cli", "ingest", "--client-id", self.client_id]
            self.proc = subprocess.Popen(cmd,
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        if wait:
            self.wait_subscribed(offset)

    def wait_subscribed(self, offset: int = 0, timeout: float = 60.0) -> None:
        """Wait for the SUBACK (subscribed, or refused: then the test sees the refusal) logged after ``offset``."""
        def answered() -> bool:
            if not self.alive():
                raise RuntimeError(f"ioc ingest exited: {self.log.read_bytes()[offset:][-2000:]!r}")
            text = self.log.read_bytes()[offset:]
            return b"MQTT subscribed to" in text or b"refused the subscription" in text
        wait_until(answered, timeout, 0.05, what=f"ingest {self.client_id} subscribed")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class ServiceProcess:
    """An ``ioc`` command serving HTTP as a child process on a free port; up when ``ready_path`` answers 200."""

    ready_path = "/readyz"
    #: Start it as the leader of its own process group (a subclass that kills its whole group on teardown).
    new_session = False

    def __init__(self, env: dict[str, str], log: Path, args: list[str]) -> None:
        self.env, self.log, self.args = env, log, args
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait: bool = True) -> ServiceProcess:
        with self.log.open("ab") as out:
            cmd = [sys.executable, "-m", "ioc.cli", *self.args, "--port", str(self.port)]
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=self.new_session)
        if wait:
            wait_until(self._up, 60, 0.1, what=f"ioc {' '.join(self.args)} up")
        return self

    def _up(self) -> bool:
        import urllib.error
        import urllib.request

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"ioc {' '.join(self.args)} exited: {self.log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}{self.ready_path}", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a test may have paused it
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class ServeProcess(ServiceProcess):
    """``ioc serve --ingest`` as a child process on a free port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(env, log, ["serve", "--ingest"])

    def ws_url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def auth_headers(self) -> dict[str, str]:
        """Headers that authenticate a test client (an admin token when the process was given one)."""
        token = self.env.get("IOC_TEST_ADMIN_TOKEN")
        if token is None and "IOC_DATABASE_URL" in self.env:
            from tests.support.auth import make_token_sync

            token = self.env["IOC_TEST_ADMIN_TOKEN"] = make_token_sync(self.env["IOC_DATABASE_URL"], "admin", "tests")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def get(self, path: str) -> Any:
        """GET a JSON document (any status: error bodies are JSON too)."""
        import json
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.url + path, headers=self.auth_headers())
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            return json.load(err)

    def __enter__(self) -> ServeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def api_on_seeded_database(mqtt_port: int, seed: Callable[[str], Coroutine[Any, Any, None]],
                           name: str) -> Iterator[tuple[ServiceProcess, str]]:
    """An API-only ``ioc serve`` on a database of its own, filled by ``seed(dsn)`` first (a storm's rows stay
    there); the log goes to ``artifacts/<name>/serve.log``. Yields the process and the database's DSN."""
    import asyncio

    from tests.conftest import BASE_DSN, create_database, drop_database, ingest_env

    dsn = asyncio.run(create_database(BASE_DSN))
    try:
        asyncio.run(seed(dsn))
        env = ingest_env(dsn, mqtt_port, IOC_LIVE__LISTEN_MQTT="false", IOC_CLUSTER__RESYNC_S="3600")
        log = Path(__file__).resolve().parents[2] / "artifacts" / name
        log.mkdir(parents=True, exist_ok=True)
        srv = ServiceProcess(env, log / "serve.log", ["serve", "--role", "api"]).start()
        try:
            yield srv, dsn
        finally:
            srv.stop()
    finally:
        asyncio.run(drop_database(BASE_DSN, dsn))
