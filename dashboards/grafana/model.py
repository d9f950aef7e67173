"""Small builders for Grafana dashboard JSON (schema of Grafana 10/11): panels, targets, variables.

Only what the IOC dashboards use. Every SQL target is plain PostgreSQL with Grafana's macros
(``$__timeFilter``, ``$__timeGroupAlias``, ``$__timeFrom()``, ``$__timeTo()``), which the PostgreSQL
data source expands for TimescaleDB (``time_bucket``) or plain PostgreSQL alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DATASOURCE_UID = "ioc-db"
DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": DATASOURCE_UID}
SCHEMA_VERSION = 39


@dataclass
class Panel:
    """One panel; ``sql`` targets in order (refId A, B, ...)."""

    title: str
    kind: str  # timeseries, stat, table, bargauge
    sql: list[str]
    w: int = 12
    h: int = 8
    unit: str | None = None
    description: str = ""
    fmt: str = "time_series"  # or "table"
    options: dict[str, Any] = field(default_factory=dict)
    thresholds: list[tuple[float | None, str]] | None = None

    def to_json(self, pid: int, x: int, y: int) -> dict[str, Any]:
        defaults: dict[str, Any] = {}
        if self.unit:
            defaults["unit"] = self.unit
        if self.thresholds:
            defaults["thresholds"] = {"mode": "absolute", "steps": [{"value": v, "color": c}
                                                                    for v, c in self.thresholds]}
            defaults["color"] = {"mode": "thresholds"}
        doc: dict[str, Any] = {
            "id": pid, "type": self.kind, "title": self.title, "description": self.description,
            "datasource": DATASOURCE, "gridPos": {"x": x, "y": y, "w": self.w, "h": self.h},
            "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "editorMode": "code",
                         "format": self.fmt, "rawQuery": True, "rawSql": sql.strip()}
                        for i, sql in enumerate(self.sql)],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": self.options,
        }
        # A panel on a rollup never asks for finer buckets than the rollup has.
        text = " ".join(self.sql)
        if "telemetry_1h" in text or "kpi_1h" in text:
            doc["interval"] = "1h"
        elif "telemetry_5m" in text or "kpi_5m" in text:
            doc["interval"] = "5m"
        return doc


def variable(name: str, label: str, sql: str, multi: bool = True) -> dict[str, Any]:
    """A query variable (``$name`` in SQL), with an "All" option."""
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE, "query": sql,
            "definition": sql, "refresh": 2, "multi": multi, "includeAll": True, "allValue": None,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1}


def dashboard(uid: str, title: str, panels: list[Panel], *, tags: list[str], refresh: str = "30s",
              time_from: str = "now-6h", variables: list[dict[str, Any]] | None = None,
              description: str = "") -> dict[str, Any]:
    """A dashboard with panels laid out left to right, top to bottom on Grafana's 24-column grid."""
    laid, x, y, row_h = [], 0, 0, 0
    for pid, panel in enumerate(panels, start=1):
        if x + panel.w > 24:
            x, y, row_h = 0, y + row_h, 0
        laid.append(panel.to_json(pid, x, y))
        x, row_h = x + panel.w, max(row_h, panel.h)
    return {
        "uid": uid, "title": title, "description": description, "tags": tags, "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "refresh": refresh, "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables or []}, "annotations": {"list": []}, "panels": laid,
    }
