"""Find or start the database and broker for the demo.

Order: the ``IOC_DATABASE_URL`` / ``IOC_MQTT_URL`` settings when set; else PostgreSQL and Mosquitto on
localhost when they answer; else private instances started from the machine's PostgreSQL and
Mosquitto binaries inside a data folder (kept between runs, stopped on exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

logger = logging.getLogger(__name__)

BROKER_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {data}/
max_queued_messages 10000000
max_queued_bytes 4294967296
max_inflight_messages 0
persistent_client_expiration 14d
"""


class InfraError(RuntimeError):
    """Neither a configured, a local nor a private service could be had."""


def port_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def _wait_port(port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_answers("127.0.0.1", port):
            return
        time.sleep(0.1)
    raise InfraError(f"{what} did not start listening on port {port} within {timeout:.0f}s")


class Services:
    """What the demo runs against, and the private processes to stop afterwards."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.database_url = ""
        self.mqtt_url = ""
        self.notes: list[str] = []
        self._stops: list[tuple[str, list[str] | subprocess.Popen[bytes]]] = []

    async def resolve_database(self, configured: str | None) -> str:
        if configured:
            self.database_url = configured
            self.notes.append("database: IOC_DATABASE_URL")
        elif port_answers("127.0.0.1", 5432) and await _ensure_database(
                "postgresql://postgres@127.0.0.1:5432/postgres", "ioc_demo"):
            self.database_url = "postgresql://postgres@127.0.0.1:5432/ioc_demo"
            self.notes.append("database: local PostgreSQL on 127.0.0.1:5432, database ioc_demo")
        else:
            self.database_url = await asyncio.to_thread(self._start_private_postgres)
            if not await _ensure_database(self.database_url.rsplit("/", 1)[0] + "/postgres", "ioc_demo"):
                raise InfraError("private PostgreSQL started but refuses connections")
        return self.database_url

    def resolve_broker(self, configured: str | None) -> str:
        if configured:
            self.mqtt_url = configured
            self.notes.append("broker: IOC_MQTT_URL")
        elif port_answers("127.0.0.1", 1883):
            self.mqtt_url = "mqtt://127.0.0.1:1883"
            self.notes.append("broker: local Mosquitto on 127.0.0.1:1883")
        else:
            self.mqtt_url = self._start_private_mosquitto()
        return self.mqtt_url

    def _start_private_postgres(self, port: int = 55432) -> str:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise InfraError("no PostgreSQL answers on 127.0.0.1:5432 and no PostgreSQL binaries are installed "
                             "(apt-get install postgresql, or set IOC_DATABASE_URL)")
        bindir = Path(bins[-1]).parent
        root = self.data_dir / "postgres"
        data = root / "data"
        root.mkdir(parents=True, exist_ok=True)
        # PostgreSQL refuses to run as root: run it as the postgres account the package created.
        runner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        if not (data / "PG_VERSION").exists():
            subprocess.run([*runner, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                            "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL)
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {root}"
        ctl = [*runner, str(bindir / "pg_ctl"), "-D", str(data)]
        subprocess.run([*ctl, "-o", opts, "-l", str(root / "log"), "-w", "start"], check=True,
                       stdout=subprocess.DEVNULL)
        self._stops.append(("postgres", [*ctl, "-m", "fast", "-w", "stop"]))
        self.notes.append(f"database: private PostgreSQL in {data} on port {port}")
        return f"postgresql://postgres@127.0.0.1:{port}/ioc_demo"

    def _start_private_mosquitto(self, port: int = 18883) -> str:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            raise InfraError("no broker answers on 127.0.0.1:1883 and Mosquitto is not installed "
                             "(apt-get install mosquitto, or set IOC_MQTT_URL)")
        root = self.data_dir / "mosquitto"
        root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0 and _has_user("mosquitto"):
            shutil.chown(root, "mosquitto", "mosquitto")  # mosquitto drops root and must write its data
        conf = root / "mosquitto.conf"
        tls_port, tls_conf = self._demo_tls(root, port + 1)
        conf.write_text(BROKER_CONF.format(port=port, data=root) + tls_conf)
        proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(port, 10, "Mosquitto")
        if tls_port:
            self.notes.append(f"broker TLS: mqtts://127.0.0.1:{tls_port} (CA {root / 'pki' / 'ca.crt'}; "
                              "set IOC_MQTT__CA_FILE to it)")
        self._stops.append(("mosquitto", proc))
        self.notes.append(f"broker: private Mosquitto on port {port} (data in {root})")
        return f"mqtt://127.0.0.1:{port}"

    def _demo_tls(self, root: Path, port: int) -> tuple[int | None, str]:
        """A TLS listener for the private broker, with certificates from ``ioc pki`` kept in ``root/pki``.

        The demo itself stays on the loopback plaintext listener; this one is there to try devices and
        services over mqtts:// (docs/broker-security.md). Anonymous like the rest of the demo broker, and
        bound to 127.0.0.1 like it. Returns (port, config lines), or (None, "") when certificates cannot be made.
        """
        from ioc.provision.pki import PkiError, init_pki

        try:
            pki, _ = init_pki(root / "pki", ["localhost", "127.0.0.1"], reissue_server=False)
        except (PkiError, OSError, ValueError) as err:
            logger.warning("demo broker without TLS: %s", err)
            return None, ""
        if os.geteuid() == 0 and _has_user("mosquitto"):
            for path in (pki.root, pki.server_cert, pki.server_key, pki.ca_cert):
                shutil.chown(path, "mosquitto", "mosquitto")  # read after mosquitto dropped root
        return port, (f"listener {port} 127.0.0.1\ncafile {pki.ca_cert}\ncertfile {pki.server_cert}\n"
                      f"keyfile {pki.server_key}\ntls_version tlsv1.2\n")

    def stop(self) -> None:
        """Stop the private services, newest first."""
        for name, how in reversed(self._stops):
            try:
                if isinstance(how, subprocess.Popen):
                    how.terminate()
                    how.wait(10)
                else:
                    subprocess.run(how, check=False, stdout=subprocess.DEVNULL, timeout=30)
            except Exception as err:  # keep stopping the others
                logger.warning("stopping private %s failed: %s", name, err)
        self._stops.clear()


async def _ensure_database(admin_dsn: str, name: str) -> bool:
    """Create database ``name`` next to ``admin_dsn`` if missing; False if the server refuses us."""
    try:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        logger.info("cannot use %s: %s", _redact(admin_dsn), err)
        return False
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
        return True
    finally:
        await conn.close()


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _redact(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    return urlunsplit(parts)
