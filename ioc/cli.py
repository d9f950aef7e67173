"""The ``ioc`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ioc.diagnostics import install_stack_dumps
from ioc.settings import Settings

logger = logging.getLogger("ioc")
DEFAULT_DEMO_DIR = "~/.local/share/ioc-demo"


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from ioc.services import db_upgrade

    if args.db_command == "upgrade":
        from storage.db import StorageError

        try:
            backend, applied = asyncio.run(db_upgrade(settings))
        except StorageError as err:  # e.g. TimescaleDB installed but not preloaded: say what to do
            print(f"ioc db upgrade: {err}", file=sys.stderr)
            return 1
        print(f"database up to date ({backend.value} backend); applied: {', '.join(applied) or 'nothing'}")
        return 0
    if args.db_command == "status":
        return asyncio.run(_db_status(settings))
    return 2


async def _db_status(settings: Settings) -> int:
    import asyncpg

    from storage.db import SchemaNotReady, read_backend
    from storage.migrate import current_version

    conn = await asyncpg.connect(settings.database_url, statement_cache_size=settings.storage.statement_cache_size)
    try:
        try:
            backend = await read_backend(conn)
        except SchemaNotReady as err:
            print(err)
            return 1
        print(f"backend: {backend.value}; schema version: {await current_version(conn)}")
        return 0
    finally:
        await conn.close()


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from prometheus_client import start_http_server

    from ioc.services import build_worker, run_until_signal

    if args.write_method:
        settings.ingest.write_method = args.write_method
    port = args.metrics_port if args.metrics_port is not None else settings.ingest.metrics_port
    if port:
        start_http_server(port, addr="127.0.0.1" if args.metrics_host is None else args.metrics_host)
        logger.info("ingest metrics on :%d/metrics", port)
    worker = build_worker(settings, client_id=args.client_id)
    asyncio.run(run_until_signal(worker, settings))
    return 0


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from ioc.api.app import create_app
    from ioc.api.conn_limits import ConnectionLimits
    from ioc.api.http_guard import raise_open_files_limit, uvicorn_bounds

    open_files, _ = raise_open_files_limit()  # many screens and slow clients: do not stop at a container's 1,024
    auth = settings.auth
    limits = ConnectionLimits.for_files(auth.connections_per_client, auth.connections_max, auth.connections_proxies,
                                        open_files)
    app = create_app(settings, embed_ingest=args.ingest, role=args.role)
    # request heads bounded in time and size (uvicorn's own protocol bounds neither), connections per address and
    # in all, WebSocket messages too
    uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower(),
                ws_per_message_deflate=settings.live.ws_compression, **uvicorn_bounds(limits))
    return 0


def _cmd_analytics_worker(args: argparse.Namespace, settings: Settings) -> int:
    import socket

    from ioc.services import run_partition_worker

    asyncio.run(run_partition_worker(settings, args.id or f"{socket.gethostname()}-{os.getpid()}"))
    return 0


def _cmd_camera_check(args: argparse.Namespace, settings: Settings) -> int:
    from analytics.camera.batch import check_dir

    count = check_dir(args.dir, args.out, progress=not args.quiet)
    print(f"{count} snapshots analysed -> {args.out}")
    return 0


def _cmd_detect(args: argparse.Namespace, settings: Settings) -> int:
    from analytics.numeric.batch import detect_path

    refused: list[str] = []
    count = detect_path(args.path, args.out, progress=not args.quiet, refused=refused)
    print(f"{count} file(s) scored -> {args.out}")
    for reason in refused:
        print(f"refused: {reason}", file=sys.stderr)
    return 1 if refused else 0


def _cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    from ioc.history import run_history
    from simulators.clock import parse_time

    until = parse_time(args.until) if args.until else None
    stats = run_history(settings, args.scenario, until, args.hours, progress=not args.quiet)
    print(f"history: {stats.messages:,} messages ({stats.values:,} values) stored, {stats.series:,} series learned "
          f"in {stats.seconds:.0f} s")
    return 0


def _cmd_dashboards(args: argparse.Namespace, settings: Settings) -> int:
    from dashboards.grafana import provision

    if args.dash_command == "export":
        for path in provision.export(args.out):
            print(path)
        return 0
    from grafana_client import GrafanaApi

    timescaledb = {"yes": True, "no": False}.get(args.timescaledb)
    if timescaledb is None:
        timescaledb = asyncio.run(_uses_timescaledb(settings))
    api = GrafanaApi.from_url(args.grafana_url, credential=args.token) if args.token else \
        GrafanaApi.from_url(args.grafana_url)
    for uid, what in provision.provision(api, args.database_url or settings.database_url, timescaledb).items():
        print(f"{uid}: {what}")
    return 0


async def _uses_timescaledb(settings: Settings) -> bool:
    import asyncpg

    from storage.db import Backend, read_backend

    conn = await asyncpg.connect(settings.database_url, statement_cache_size=settings.storage.statement_cache_size)
    try:
        return await read_backend(conn) is Backend.TIMESCALEDB
    finally:
        await conn.close()


def _cmd_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from simulators.cli import run

    return run(args, settings.mqtt_url, settings.mqtt_tls)


def _cmd_pki(args: argparse.Namespace, settings: Settings) -> int:
    from ioc.provision.commands import run_pki

    return run_pki(args)


def _cmd_devices(args: argparse.Namespace, settings: Settings) -> int:
    from ioc.provision.commands import run_devices

    return run_devices(args, settings.database_url)


def _cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    from ioc.auth.cli import run_users

    return run_users(args, settings)


def _cmd_tokens(args: argparse.Namespace, settings: Settings) -> int:
    from ioc.auth.cli import run_tokens

    return run_tokens(args, settings)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from ioc.demo import DEFAULT_DATA_DIR, run_demo

    data_dir = (args.data_dir or DEFAULT_DATA_DIR).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(run_demo(settings, args.host, args.port, data_dir, args.sim_args or []))
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled once everything has shut down: that is the normal way out.
        print("ioc demo: stopped", file=sys.stderr)
        return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="ioc", description="Smart-city IOC realtime monitor. Settings come from IOC_* environment variables.")
    parser.add_argument("--log-level", default=None, help="override IOC_LOG_LEVEL (DEBUG, INFO, WARNING...)")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database schema management")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply migrations (TimescaleDB when available, else partitioned PostgreSQL)")
    db_sub.add_parser("status", help="print the backend and schema version")

    ing = sub.add_parser("ingest", help="run one MQTT ingest worker (several may share the load)")
    ing.add_argument("--client-id", help="MQTT client id; stable per worker (default IOC_MQTT__CLIENT_ID)")
    ing.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    ing.add_argument("--metrics-host", help="address for --metrics-port (default 127.0.0.1)")
    ing.add_argument("--write-method", choices=["copy", "unnest"], help="override IOC_INGEST__WRITE_METHOD")

    aw = sub.add_parser("analytics-worker", help="numeric analytics for a share of the partitioned reading stream "
                        "(NATS JetStream, IOC_PARTITION__NATS_URL); run K of them")
    aw.add_argument("--id", help="worker id (default host-pid)")

    cam = sub.add_parser("camera-check", help="run the live camera analyser over DIR/<sequence>/<index>.jpg")
    cam.add_argument("dir", type=Path, help="folder with one sub-folder of numbered JPEGs per camera")
    cam.add_argument("--out", type=Path, required=True, help="CSV to write: sequence,index,label,activity")
    cam.add_argument("--quiet", action="store_true", help="no progress bar")

    det = sub.add_parser("detect", help="run the live numeric detectors over CSV files (timestamp,value)")
    det.add_argument("path", type=Path, help="a CSV file or a folder searched recursively")
    det.add_argument("--out", type=Path, required=True, help="folder for the scored CSVs (same relative paths)")
    det.add_argument("--quiet", action="store_true", help="no progress bar")

    demo = sub.add_parser("demo", help="simulated city -> ingest -> analytics -> live wall display, one command")
    demo.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    demo.add_argument("--data-dir", type=Path, help=f"where private services keep data (default {DEFAULT_DEMO_DIR})")
    demo.add_argument("--sim-args", nargs=argparse.REMAINDER, help="pass the rest to the simulator (see ioc simulate)")

    hist = sub.add_parser("history", help="store a simulated past (no incidents) and warm the detectors up on it")
    hist.add_argument("--scenario", type=Path, help="scenario file (default: the simulator's default city)")
    hist.add_argument("--until", help="end of the history, RFC 3339 (default now); a live run starts there")
    hist.add_argument("--hours", type=float, default=26.0,
                      help="length (default 26: the detectors judge nothing before a full day)")
    hist.add_argument("--quiet", action="store_true", help="no progress bar")

    dash = sub.add_parser("dashboards", help="Grafana dashboards as code: export files or provision a Grafana")
    dash_sub = dash.add_subparsers(dest="dash_command", required=True)
    exp = dash_sub.add_parser("export", help="write the dashboards as JSON (for Grafana file provisioning)")
    exp.add_argument("out", type=Path, help="folder to write <uid>.json into")
    prov = dash_sub.add_parser("provision", help="create or update data source, folder and dashboards over the API")
    prov.add_argument("--grafana-url", required=True, help="e.g. http://admin:PASSWORD@127.0.0.1:3000")
    prov.add_argument("--token", help="service-account token (instead of credentials in the URL)")
    prov.add_argument("--database-url", help="the database as Grafana reaches it (default IOC_DATABASE_URL)")
    prov.add_argument("--timescaledb", choices=["auto", "yes", "no"], default="auto",
                      help="tell Grafana the database is TimescaleDB (auto: ask the database)")

    from ioc.provision.commands import add_devices_arguments, add_pki_arguments

    add_pki_arguments(sub.add_parser("pki", help="the broker's small CA: CA, server and client certificates"))
    add_devices_arguments(sub.add_parser("devices", help="broker accounts and ACLs for devices and services"))

    from simulators.cli import add_arguments

    sim = sub.add_parser("simulate", help="simulated city devices publishing over MQTT (IOC_MQTT_URL), with incidents")
    add_arguments(sim)

    from ioc.auth.cli import add_tokens_arguments, add_users_arguments

    add_users_arguments(sub.add_parser("users", help="local accounts of the pages: add, list, disable, set-password"))
    add_tokens_arguments(sub.add_parser("tokens", help="API tokens for walls and machines: create, list, revoke"))

    srv = sub.add_parser("serve", help="run the HTTP API (REST, /metrics, /healthz, OpenAPI at /docs)")
    srv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    srv.add_argument("--ingest", action="store_true", help="also run an ingest worker in this process")
    srv.add_argument("--role", choices=["api", "brain", "all"], default="all",
                     help="api: REST, WebSocket, pages; brain: analytics, alerts, escalation, notifications while "
                          "holding the lease (hot standby otherwise); all: both (default). See docs/ha.md")
    return parser


_COMMANDS = {"db": _cmd_db, "demo": _cmd_demo, "ingest": _cmd_ingest,
             "serve": _cmd_serve, "camera-check": _cmd_camera_check, "analytics-worker": _cmd_analytics_worker,
             "detect": _cmd_detect, "simulate": _cmd_simulate, "history": _cmd_history,
             "dashboards": _cmd_dashboards, "pki": _cmd_pki, "devices": _cmd_devices}

_COMMANDS |= {"users": _cmd_users, "tokens": _cmd_tokens}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ioc`` command."""
    args = build_parser().parse_args(argv)
    install_stack_dumps()  # kill -USR1 <pid>: what a stuck command is doing
    settings = Settings()
    _setup_logging(args.log_level or settings.log_level)
    try:
        return _COMMANDS[args.command](args, settings)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
