"""Rows of the alert store back into the alert engine's model, as the stage loads them on start.

Read leniently: a row is legal for the schema whatever an older version, a hand repair or a partial clean-up
left in it, and one row the model cannot hold as it is kept the engine from loading at all (every action then
answered 503 "still loading", found by tests/integration/test_action_fuzz.py). A severity the engine does not
know (``incidents.severity`` has no CHECK) is read as the lowest, as the views' SQL ranks it; evidence that is
not an object is kept under ``stored``; escalation state (``detail``) that is not an object is read as none.
Each is logged; the row is written back repaired when it next changes.
"""

from __future__ import annotations

import logging
from typing import Any

from ioc.alerts.model import Alert, Incident, Severity, State

logger = logging.getLogger(__name__)


def alert_from_row(row: dict[str, Any]) -> Alert:
    """An alert as stored (``storage.alerts``) back in the engine's model; its position rides in the evidence."""
    evidence = _object(row["evidence"], "alert", row["id"], "evidence")
    lat, lon = evidence.pop("_lat", None), evidence.pop("_lon", None)
    return Alert(row["id"], row["dedupe_key"], row["rule"], row["category"], _severity(row, "alert"),
                 State(row["state"]), row["title"], row["explanation"], row["started_at"], row["last_seen_at"],
                 device_id=row["device_id"], kind=row["kind"], district=row["district"], lat=lat, lon=lon,
                 incident_id=row["incident_id"], resolved_at=row["resolved_at"], closed_at=row["closed_at"],
                 acked_by=row["acked_by"], acked_at=row["acked_at"], assignee=row["assignee"], flaps=row["flaps"],
                 suppressed=row["suppressed"], evidence=evidence)


def incident_from_row(row: dict[str, Any]) -> Incident:
    """An incident as stored back in the engine's model (its escalation state rides in ``detail``)."""
    detail = _object(row["detail"], "incident", row["id"], "detail")
    escalation = detail.get("escalation")
    if escalation is not None and not isinstance(escalation, dict):
        logger.warning("incident %s: escalation state %r is not an object; read as none", row["id"], escalation)
    return Incident(row["id"], row["group_key"], row["category"], _severity(row, "incident"), State(row["state"]),
                    row["title"], row["started_at"], row["updated_at"], district=row["district"],
                    resolved_at=row["resolved_at"], closed_at=row["closed_at"], acked_by=row["acked_by"],
                    acked_at=row["acked_at"], assignee=row["assignee"], suppressed=row["suppressed"],
                    escalation=dict(escalation) if isinstance(escalation, dict) else {})


def _severity(row: dict[str, Any], what: str) -> Severity:
    try:
        return Severity(row["severity"])
    except ValueError:
        logger.warning("%s %s: severity %r unknown; read as %s", what, row["id"], row["severity"], Severity.INFO)
        return Severity.INFO


def _object(value: Any, what: str, row_id: Any, column: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    if value is None or value == [] or value == "":
        return {}
    logger.warning("%s %s: %s %r is not an object; kept under 'stored'", what, row_id, column, value)
    return {"stored": value}
