"""What stands in for Grafana here (no Grafana server can be installed on this machine).

* :func:`expand` turns a panel's SQL into what Grafana's PostgreSQL data source sends, for the macros
  our dashboards use, so the panels can run against both real backends;
* :class:`FakeGrafana` answers the few HTTP API calls provisioning makes, on 127.0.0.1, and keeps what
  it was given. It checks our calls and their shapes, not Grafana's behaviour.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(interval: str) -> int:
    m = re.fullmatch(r"'?(\d+)([smhd])'?", interval.strip())
    if not m:
        raise ValueError(f"unsupported interval {interval!r}")
    return int(m[1]) * _UNITS[m[2]]


def expand(sql: str, timescaledb: bool, start: datetime, end: datetime, interval: str = "5m",
           districts: list[str] | None = None) -> str:
    """Grafana's macro expansion (PostgreSQL data source), for $__timeFilter, $__timeGroupAlias,
    $__timeFrom(), $__timeTo(), $__interval and the ``$district`` variable."""
    frm, to = f"'{start.isoformat()}'", f"'{end.isoformat()}'"
    sql = sql.replace("$__interval", interval)

    def group(m: re.Match[str]) -> str:
        col, step = m[1].strip(), _seconds(m[2])
        if timescaledb:
            return f"time_bucket('{step}s', {col}) AS \"time\""
        return f"to_timestamp(floor(extract(epoch from {col}) / {step}) * {step}) AS \"time\""

    sql = re.sub(r"\$__timeGroupAlias\(([^,]+),\s*([^)]+)\)", group, sql)
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m[1].strip()} BETWEEN {frm} AND {to}", sql)
    sql = sql.replace("$__timeFrom()", frm).replace("$__timeTo()", to)
    values = ", ".join("'" + d.replace("'", "''") + "'" for d in (districts or ["-"]))
    return sql.replace("$district", values)


class FakeGrafana:
    """A thread serving /api/health, datasources, folders and dashboards by uid."""

    def __init__(self) -> None:
        self.datasources: dict[str, dict[str, Any]] = {}
        self.folders: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.auth: list[str | None] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else None

            def _route(self, method: str) -> None:
                fake.calls.append((method, self.path))
                fake.auth.append(self.headers.get("Authorization"))
                body = self._body() if method in ("POST", "PUT") else None
                path = self.path.split("?")[0]
                if path == "/api/health":
                    return self._send(200, {"database": "ok", "version": "11.3.0"})
                m = re.fullmatch(r"/api/datasources/uid/([\w-]+)", path)
                if m and method == "GET":
                    ds = fake.datasources.get(m[1])
                    return self._send(200, ds) if ds else self._send(404, {"message": "Data source not found"})
                if m and method == "PUT":
                    fake.datasources[m[1]] = body
                    return self._send(200, {"message": "Datasource updated"})
                if path == "/api/datasources" and method == "POST":
                    if body["uid"] in fake.datasources:
                        return self._send(409, {"message": "data source with the same uid already exists"})
                    fake.datasources[body["uid"]] = body
                    return self._send(200, {"message": "Datasource added", "id": len(fake.datasources)})
                m = re.fullmatch(r"/api/folders/([\w-]+)", path)
                if m and method == "GET":
                    f = fake.folders.get(m[1])
                    return self._send(200, f) if f else self._send(404, {"message": "folder not found"})
                if path == "/api/folders" and method == "POST":
                    fake.folders[body["uid"]] = body
                    return self._send(200, {"uid": body["uid"], "title": body["title"]})
                if path == "/api/dashboards/db" and method == "POST":
                    board = body["dashboard"]
                    fake.dashboards[board["uid"]] = body
                    return self._send(200, {"uid": board["uid"], "status": "success", "version": 1})
                return self._send(404, {"message": f"no route {method} {path}"})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PUT(self) -> None:
                self._route("PUT")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeGrafana:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
