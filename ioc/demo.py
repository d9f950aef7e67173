"""``ioc demo``: one command from a fresh machine to a live simulated city on the wall display."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn

import simulators
from ioc.api.app import create_app
from ioc.api.http_guard import uvicorn_bounds
from ioc.infra import InfraError, Services
from ioc.services import db_upgrade
from ioc.settings import Settings
from simulators.clock import iso_utc

logger = logging.getLogger(__name__)

DEFAULT_DATA_DIR = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "ioc-demo"


LIVE_DEMO_SCENARIO = Path(simulators.__file__).resolve().parent / "data" / "live-demo.toml"


def simulator_command(mqtt_url: str, data_dir: Path, options: list[str]) -> list[str]:
    """The simulator child process (its own process: it must not compete with the API for the GIL).

    Without options it runs the bundled live-demo scenario in real time until stopped, writing its
    ground truth next to the demo's data so a run can be scored afterwards; every device reports within its
    first 5 s (not over its period, up to a minute), so the wall's map is full at once.
    """
    if not options:
        options = ["--scenario", str(LIVE_DEMO_SCENARIO), "--duration", "0",
                   "--ground-truth", str(data_dir / "ground-truth.jsonl"), "--report-every", "60",
                   "--first-report-within", "5"]
    return [sys.executable, "-m", "simulators", "--mqtt-url", mqtt_url, *options]


def history_command(until: float, hours: float = 26.0) -> list[str]:
    """``ioc history`` for the live-demo scenario, ending where the live simulator starts."""
    return [sys.executable, "-m", "ioc.cli", "history", "--scenario", str(LIVE_DEMO_SCENARIO), "--until",
            iso_utc(until), "--hours", str(hours), "--quiet"]


async def _warm_up(app: Any, database_url: str, until: float) -> None:
    """Write the day before the live run and hand the detectors what they learned from it."""
    env = {**os.environ, "IOC_DATABASE_URL": database_url}
    t = time.monotonic()
    proc = await asyncio.create_subprocess_exec(*history_command(until), env=env, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        print(f"ioc demo: history not written (detectors learn live instead):\n{out.decode()[-2000:]}",
              file=sys.stderr, flush=True)
        return
    stage = getattr(app.state, "analytics", None)
    if stage is not None:
        await stage.load()
    print(f"  detectors warmed up on a simulated day of history ({time.monotonic() - t:.0f} s): jams and KPI "
          "degradations are now judged against what is usual for each hour", flush=True)


async def demo_credentials(database_url: str) -> tuple[str, str]:
    """A fresh password for the demo's ``admin`` (made if missing) and a viewer token for the wall."""
    from ioc.auth import secrets as sec
    from ioc.auth import store
    from ioc.auth.model import Role

    password = sec.new_password()
    conn = await asyncpg.connect(database_url)
    try:
        if await store.user_for_login(conn, "admin") is None:
            await store.create_user(conn, "admin", Role.ADMIN, password, "Demo admin")
        else:
            await store.set_password(conn, "admin", password)
            await store.set_disabled(conn, "admin", False)
        token, _ = await store.create_token(conn, "demo wall", Role.VIEWER, 30, "ioc demo")
    finally:
        await conn.close()
    return password, token


async def run_demo(settings: Settings, host: str, port: int, data_dir: Path, sim_options: list[str]) -> int:
    """Find or start PostgreSQL and Mosquitto, migrate, serve API + ingest, run the simulator; until Ctrl-C."""
    services = Services(data_dir)
    simulator: asyncio.subprocess.Process | None = None
    warm_up: asyncio.Task[None] | None = None
    try:
        try:
            database_url = await services.resolve_database(os.environ.get("IOC_DATABASE_URL"))
            mqtt_url = services.resolve_broker(os.environ.get("IOC_MQTT_URL"))
        except InfraError as err:
            print(f"ioc demo: {err}", file=sys.stderr)
            return 2
        settings = settings.model_copy(update={"database_url": database_url, "mqtt_url": mqtt_url})
        # A demo worker of its own: never share a subscription group with real ingest workers, nor a client
        # id with another demo on the same broker (the broker would throw one of them off for the other).
        tag = hashlib.blake2b(database_url.encode(), digest_size=3).hexdigest()
        settings.mqtt.client_id = f"ioc-demo-ingest-{tag}"
        settings.mqtt.share_group = f"ioc-demo-{tag}"
        settings.mqtt.session_expiry_s = 3600
        backend, _ = await db_upgrade(settings)
        admin_password, wall_token = await demo_credentials(database_url)
        app = create_app(settings, embed_ingest=True)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                               ws_per_message_deflate=settings.live.ws_compression,
                                               **uvicorn_bounds()))
        serving = asyncio.create_task(server.serve())
        deadline = time.monotonic() + 60
        while not server.started:
            if serving.done() or time.monotonic() > deadline:
                await serving
                print("ioc demo: the web server did not start", file=sys.stderr)
                return 2
            await asyncio.sleep(0.05)
        live_from = time.time()
        # The live run starts at its own "now" (a second or two after live_from); the history ends at live_from.
        simulator = await asyncio.create_subprocess_exec(*simulator_command(mqtt_url, data_dir, sim_options),
                                                         stdin=asyncio.subprocess.DEVNULL)
        if not sim_options:
            warm_up = asyncio.create_task(_warm_up(app, database_url, live_from), name="demo-history")
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print("\n".join([
            "", "IOC demo is running.",
            *[f"  {note}" for note in services.notes], f"  storage backend: {backend.value}",
            f"  wall display:  http://{shown}:{port}/?token={wall_token}",
            f"  operator view: http://{shown}:{port}/ops  (log in as admin, password {admin_password} — "
            "new at every demo start; `ioc users add` makes more)",
            f"  API docs:      http://{shown}:{port}/docs",
            f"  live feed:     ws://{shown}:{port}/ws/live",
            f"  ground truth:  {data_dir / 'ground-truth.jsonl'}" if not sim_options else "",
            "  writing the day before and warming the detectors up on it (about a minute)..."
            if not sim_options else "",
            "Press Ctrl-C to stop.", ""]), flush=True)
        await serving  # uvicorn owns SIGINT/SIGTERM and returns here after a graceful shutdown
        return 0
    finally:
        if warm_up is not None and not warm_up.done():
            warm_up.cancel()
            await asyncio.gather(warm_up, return_exceptions=True)
        if simulator is not None and simulator.returncode is None:
            simulator.terminate()
            try:
                await asyncio.wait_for(simulator.wait(), 10)
            except TimeoutError:
                simulator.kill()
        await asyncio.to_thread(services.stop)
