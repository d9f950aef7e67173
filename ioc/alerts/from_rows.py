"""Rows of the alert store back into the alert engine's model, as the stage loads them on start."""

from __future__ import annotations

from typing import Any

from ioc.alerts.model import Alert, Incident, Severity, State


def alert_from_row(row: dict[str, Any]) -> Alert:
    """An alert as stored (``storage.alerts``) back in the engine's model; its position rides in the evidence."""
    evidence = dict(row["evidence"] or {})
    lat, lon = evidence.pop("_lat", None), evidence.pop("_lon", None)
    return Alert(row["id"], row["dedupe_key"], row["rule"], row["category"], Severity(row["severity"]),
                 State(row["state"]), row["title"], row["explanation"], row["started_at"], row["last_seen_at"],
                 device_id=row["device_id"], kind=row["kind"], district=row["district"], lat=lat, lon=lon,
                 incident_id=row["incident_id"], resolved_at=row["resolved_at"], closed_at=row["closed_at"],
                 acked_by=row["acked_by"], acked_at=row["acked_at"], assignee=row["assignee"], flaps=row["flaps"],
                 suppressed=row["suppressed"], evidence=evidence)


def incident_from_row(row: dict[str, Any]) -> Incident:
    """An incident as stored back in the engine's model (its escalation state rides in ``detail``)."""
    detail = row["detail"] or {}
    return Incident(row["id"], row["group_key"], row["category"], Severity(row["severity"]), State(row["state"]),
                    row["title"], row["started_at"], row["updated_at"], district=row["district"],
                    resolved_at=row["resolved_at"], closed_at=row["closed_at"], acked_by=row["acked_by"],
                    acked_at=row["acked_at"], assignee=row["assignee"], suppressed=row["suppressed"],
                    escalation=dict(detail.get("escalation") or {}))
