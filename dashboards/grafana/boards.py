"""The IOC's Grafana dashboards, as code: city overview, traffic, mobile network (BTS), data pipeline.

Charts over time read the KPI rollups (``kpi_5m``, per 5 minutes, district, device kind and metric;
the hourly ``kpi_1h`` for the 7-day trends), current state reads the registry and the alert tables;
districts come from ``devices.district`` (the KPI rollups take it when a bucket is rolled up).
``$district`` is a multi-value variable.
"""

from __future__ import annotations

from typing import Any

from dashboards.grafana.model import Panel, dashboard, variable

DISTRICTS = variable("district", "District", "SELECT DISTINCT district FROM devices WHERE district IS NOT NULL "
                                             "ORDER BY 1")
FOLDER = {"uid": "ioc", "title": "IOC"}

_SEVERITY_ORDER = ("CASE severity WHEN 'critical' THEN 0 WHEN 'major' THEN 1 WHEN 'minor' THEN 2 "
                   "WHEN 'warning' THEN 3 ELSE 4 END")


def _per_district(kind: str, metric: str, agg: str = "sum(r.sum) / sum(r.n)", table: str = "kpi_5m") -> str:
    return (f"SELECT $__timeGroupAlias(r.bucket, $__interval), r.district AS metric, {agg} AS value "
            f"FROM {table} r WHERE $__timeFilter(r.bucket) AND r.kind = '{kind}' AND r.metric = '{metric}' "
            "AND r.district IN ($district) GROUP BY 1, 2 ORDER BY 1")


def _city(kind: str, metric: str, label: str, table: str = "kpi_5m") -> str:
    return (f"SELECT $__timeGroupAlias(r.bucket, $__interval), sum(r.sum) / sum(r.n) AS \"{label}\" FROM {table} r "
            f"WHERE $__timeFilter(r.bucket) AND r.kind = '{kind}' AND r.metric = '{metric}' "
            "AND r.district IN ($district) GROUP BY 1 ORDER BY 1")


def overview() -> dict[str, Any]:
    """What is wrong now, and how the city's key figures moved."""
    online = Panel("Devices online", "stat", [
        "SELECT kind AS metric, 100.0 * count(*) FILTER (WHERE state = 'online') / nullif(count(*), 0) AS value "
        "FROM devices WHERE district IN ($district) GROUP BY kind ORDER BY kind"], w=8, h=5, unit="percent",
        fmt="table", thresholds=[(None, "red"), (90, "orange"), (98, "green")],
        options={"reduceOptions": {"calcs": ["lastNotNull"], "values": True}, "textMode": "value_and_name"})
    live = Panel("Open incidents by severity", "stat", [
        "SELECT severity AS metric, count(*) AS value FROM incidents WHERE state IN ('open', 'acknowledged') "
        f"GROUP BY severity, {_SEVERITY_ORDER} ORDER BY {_SEVERITY_ORDER}"], w=8, h=5, fmt="table",
        options={"reduceOptions": {"calcs": ["lastNotNull"], "values": True}, "textMode": "value_and_name"})
    quiet = Panel("Devices quiet for 10 min or more", "stat", [
        "SELECT kind AS metric, count(*) FILTER (WHERE last_seen < now() - interval '10 minutes') AS value "
        "FROM devices WHERE district IN ($district) GROUP BY kind ORDER BY kind"], w=8, h=5, fmt="table",
        thresholds=[(None, "green"), (1, "orange"), (10, "red")],
        options={"reduceOptions": {"calcs": ["lastNotNull"], "values": True}, "textMode": "value_and_name"})
    incidents = Panel("Live incidents", "table", [
        "SELECT i.id, i.severity, i.state, i.title, i.district, i.started_at, i.acked_by, "
        "(SELECT count(*) FROM alerts a WHERE a.incident_id = i.id) AS alerts FROM incidents i "
        f"WHERE i.state IN ('open', 'acknowledged') ORDER BY {_SEVERITY_ORDER.replace('severity', 'i.severity')}, "
        "i.started_at LIMIT 200"], w=24, h=8, fmt="table")
    speed = Panel("Traffic speed (city mean)", "timeseries", [_city("traffic", "speed_kmh", "speed km/h")], w=8,
                  unit="velocitykmh")
    avail = Panel("BTS availability (mean)", "timeseries", [_city("bts", "availability_pct", "availability %")], w=8,
                  unit="percent")
    alerts = Panel("Alerts opened per hour, by category", "timeseries", [
        "SELECT $__timeGroupAlias(started_at, '1h'), category AS metric, count(*) AS value FROM alerts "
        "WHERE $__timeFilter(started_at) GROUP BY 1, 2 ORDER BY 1"], w=8,
        options={"legend": {"displayMode": "list", "placement": "bottom"}})
    return dashboard("ioc-overview", "IOC — City overview", [online, live, quiet, incidents, speed, avail, alerts],
                     tags=["ioc"], variables=[DISTRICTS],
                     description="Control-room summary: device health, live incidents, key city figures.")


def traffic() -> dict[str, Any]:
    """Speed, occupancy and flow per district; the slowest sensors now."""
    panels = [
        Panel("Speed by district", "timeseries", [_per_district("traffic", "speed_kmh")], unit="velocitykmh"),
        Panel("Occupancy by district", "timeseries", [_per_district("traffic", "occupancy_pct")], unit="percent"),
        Panel("Flow by district (sum of sensors)", "timeseries",
              [_per_district("traffic", "flow_veh_h", "avg(r.sum_avg)")]),
        Panel("Slowest sensors in the last 15 minutes", "table", [
            "SELECT l.device_id, d.district, l.ts, l.value AS speed_kmh FROM telemetry_latest l "
            "JOIN devices d USING (device_id) WHERE l.metric = 'speed_kmh' AND l.ts > now() - interval '15 minutes' "
            "AND d.district IN ($district) ORDER BY speed_kmh LIMIT 15"], fmt="table"),
        Panel("Speed, 7-day trend (hourly)", "timeseries", [_city("traffic", "speed_kmh", "speed km/h", "kpi_1h")],
              w=24, unit="velocitykmh", description="From the hourly rollup: set the time range to 7 days."),
    ]
    return dashboard("ioc-traffic", "IOC — Traffic", panels, tags=["ioc", "traffic"], variables=[DISTRICTS])


def bts() -> dict[str, Any]:
    """The mobile network: availability, power, quality per district."""
    panels = [
        Panel("Availability by district", "timeseries", [_per_district("bts", "availability_pct")], unit="percent"),
        Panel("Cells on battery (mains lost) by district", "timeseries", [
            _per_district("bts", "mains_power", "max(r.devices_low)")]),
        Panel("Lowest battery by district", "timeseries", [_per_district("bts", "battery_pct", "min(r.min)")],
              unit="percent"),
        Panel("Drop-call rate by district", "timeseries", [_per_district("bts", "drop_call_rate_pct")], unit="percent",
              thresholds=[(None, "green"), (2, "red")]),
        Panel("PRB utilisation by district", "timeseries", [_per_district("bts", "prb_util_pct")], unit="percent"),
        Panel("Shelter temperature (max) by district", "timeseries",
              [_per_district("bts", "temperature_c", "max(r.max)")], unit="celsius"),
    ]
    return dashboard("ioc-bts", "IOC — Mobile network (BTS)", panels, tags=["ioc", "bts"], variables=[DISTRICTS])


def pipeline() -> dict[str, Any]:
    """Is the data arriving, and is it good."""
    panels = [
        Panel("Values stored per second", "timeseries", [
            "SELECT $__timeGroupAlias(bucket, '5m'), sum(n) / 300.0 AS \"values/s\" FROM kpi_5m "
            "WHERE $__timeFilter(bucket) GROUP BY 1 ORDER BY 1"], w=12),
        Panel("Quarantined messages by reason", "timeseries", [
            "SELECT $__timeGroupAlias(received_at, $__interval), reason AS metric, count(*) AS value "
            "FROM quarantine WHERE $__timeFilter(received_at) GROUP BY 1, 2 ORDER BY 1"], w=12),
        Panel("Detector findings per hour, by type", "timeseries", [
            "SELECT $__timeGroupAlias(ts, '1h'), type AS metric, count(*) AS value FROM findings "
            "WHERE $__timeFilter(ts) GROUP BY 1, 2 ORDER BY 1"], w=12),
        Panel("Notifications by channel and status", "table", [
            "SELECT channel, status, count(*) AS notifications, max(created_at) AS latest FROM notifications "
            "WHERE $__timeFilter(created_at) GROUP BY 1, 2 ORDER BY 1, 2"], w=12, fmt="table"),
        Panel("Latest quarantined messages", "table", [
            "SELECT received_at, reason, topic, detail, payload_size FROM quarantine "
            "WHERE $__timeFilter(received_at) ORDER BY received_at DESC LIMIT 50"], w=24, fmt="table"),
    ]
    return dashboard("ioc-pipeline", "IOC — Data pipeline", panels, tags=["ioc", "pipeline"], time_from="now-24h")


def all_dashboards() -> list[dict[str, Any]]:
    """Every dashboard, in the order they are provisioned."""
    return [overview(), traffic(), bts(), pipeline()]
