"""Put the IOC's data source and dashboards into Grafana: over its HTTP API (grafana-client), or as
files for Grafana's own provisioning (what compose.yaml mounts).

Idempotent: everything is addressed by uid and overwritten, so running it again after an upgrade
updates the dashboards in place.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dashboards.grafana.boards import FOLDER, all_dashboards
from dashboards.grafana.model import DATASOURCE, DATASOURCE_UID

logger = logging.getLogger(__name__)


def datasource(database_url: str, timescaledb: bool) -> dict[str, Any]:
    """The PostgreSQL data source for ``database_url`` (the password goes in secureJsonData)."""
    parts = urlsplit(database_url)
    return {
        "uid": DATASOURCE_UID, "name": "IOC database", "type": DATASOURCE["type"], "access": "proxy",
        "url": f"{parts.hostname or '127.0.0.1'}:{parts.port or 5432}", "user": parts.username or "postgres",
        "jsonData": {"database": parts.path.lstrip("/") or "postgres", "sslmode": "disable",
                     "postgresVersion": 1500, "timescaledb": timescaledb, "maxOpenConns": 10},
        "secureJsonData": {"password": parts.password or ""}, "isDefault": True,
    }


def export(out: Path) -> list[Path]:
    """Write every dashboard as ``<uid>.json`` under ``out`` (for Grafana's file provisioning)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for board in all_dashboards():
        path = out / f"{board['uid']}.json"
        path.write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written


def provision(api: Any, database_url: str, timescaledb: bool) -> dict[str, str]:
    """Create or update the data source, the folder and the dashboards through ``api`` (a
    ``grafana_client.GrafanaApi``); returns what was done to each, by uid."""
    from grafana_client.client import GrafanaClientError

    done: dict[str, str] = {}
    ds = datasource(database_url, timescaledb)
    try:
        api.datasource.get_datasource_by_uid(DATASOURCE_UID)
        api.datasource.update_datasource_by_uid(DATASOURCE_UID, ds)
        done[DATASOURCE_UID] = "updated"
    except GrafanaClientError as err:
        if getattr(err, "status_code", None) != 404:
            raise
        api.datasource.create_datasource(ds)
        done[DATASOURCE_UID] = "created"
    try:
        api.folder.get_folder(FOLDER["uid"])
        done[FOLDER["uid"]] = "kept"
    except GrafanaClientError as err:
        if getattr(err, "status_code", None) != 404:
            raise
        api.folder.create_folder(FOLDER["title"], uid=FOLDER["uid"])
        done[FOLDER["uid"]] = "created"
    for board in all_dashboards():
        api.dashboard.update_dashboard({"dashboard": {**board, "id": None}, "folderUid": FOLDER["uid"],
                                        "overwrite": True, "message": "provisioned by ioc dashboards"})
        done[board["uid"]] = "saved"
    logger.info("grafana provisioned: %s", done)
    return done
