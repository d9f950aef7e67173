"""Alert rules: which findings, device events and states become alert signals, and how they clear.

Each rule has a :class:`RuleSpec`: category (decides incident grouping), severity, how long the
condition must hold before it fires (``for_s``), how long it must stay clear before the alert
resolves (``resolve_after_s``, the hysteresis that turns a flapping signal into one alert), and for
point-like findings that never report "over", how long without a new finding counts as clear
(``auto_clear_s``). Readings can also clear an alert by value (speed back to normal, sensor moving).

Statistical anomalies without a domain meaning (``anomaly``) are context, not incidents: they attach to
an incident on the same device, or are listed on their own at ``info`` severity.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from analytics.findings import Finding
from analytics.numeric.explain import duration
from ingest.records import DeviceEvent, Reading, StatusUpdate
from ioc.alerts.model import Severity, Signal, iso

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """How one rule behaves."""

    category: str
    severity: Severity
    for_s: float = 0.0
    resolve_after_s: float = 60.0
    auto_clear_s: float | None = None
    opens_incident: bool = True
    """False for context-only alerts: they join an incident on their device, or stand alone (listed, never
    paged), so a statistical oddity alone never puts an incident on the duty officer's queue."""


RULES: dict[str, RuleSpec] = {
    "mains_power_lost": RuleSpec("power", Severity.MAJOR, resolve_after_s=120),
    "battery_low": RuleSpec("power", Severity.CRITICAL, resolve_after_s=120),
    "device_offline": RuleSpec("offline", Severity.MAJOR, for_s=30, resolve_after_s=60),
    "device_degraded": RuleSpec("bts_quality", Severity.MINOR, for_s=30, resolve_after_s=120),
    "device_silent": RuleSpec("offline", Severity.MINOR, resolve_after_s=30),
    "camera_fault": RuleSpec("camera", Severity.MAJOR, resolve_after_s=60),
    "camera_stream": RuleSpec("camera", Severity.MINOR, auto_clear_s=600),
    "speed_collapse": RuleSpec("traffic", Severity.MAJOR, resolve_after_s=300, auto_clear_s=3600),
    "availability_drop": RuleSpec("bts_quality", Severity.MAJOR, resolve_after_s=300, auto_clear_s=3600),
    "kpi_degraded": RuleSpec("bts_quality", Severity.MINOR, resolve_after_s=600, auto_clear_s=3600),
    "sensor_stuck": RuleSpec("sensor", Severity.MINOR, resolve_after_s=120, auto_clear_s=6 * 3600),
    "anomaly": RuleSpec("anomaly", Severity.INFO, auto_clear_s=1800, opens_incident=False),
    "metric_missing": RuleSpec("anomaly", Severity.INFO, resolve_after_s=30, auto_clear_s=3600,
                               opens_incident=False),
    "device_event": RuleSpec("device", Severity.MINOR, auto_clear_s=1800),
}

#: Camera labels that mean the picture is useless (major) vs impaired (minor).
_CAMERA_MAJOR = {"black", "freeze", "occlusion", "shift"}
_CAMERA_TEXT = {"black": "video lost (black or blank picture)", "freeze": "picture frozen",
                "blur": "picture blurred / out of focus", "occlusion": "lens covered or obstructed",
                "shift": "camera re-pointed (scene changed)", "brightness": "brightness failure",
                "noise": "heavy picture noise"}
#: An obstruction must hold this long before it fires: a lorry or bus standing in front of the lens for a
#: few snapshots (a queue at the lights) is what a covered lens looks like, but a cover stays.
OCCLUSION_HOLD_S = 25.0
#: Device events and the rule they raise (severity from the device unless stated).
_EVENT_RULES = {"mains_power_lost": "mains_power_lost", "battery_low": "battery_low"}
_EVENT_CLEARS = {"mains_power_restored": ("mains_power_lost", "battery_low")}
#: BTS KPIs whose unusual rise is a degradation once past an operator's limit (value, severity, words):
#: a statistically odd but harmless value (0.6 % drops at 3 a.m., a warm afternoon) is context only.
_KPI_LIMITS = {"drop_call_rate_pct": (2.0, Severity.MINOR, "drop-call rate high"),
               "temperature_c": (45.0, Severity.MAJOR, "shelter overheating")}

DeviceInfo = Callable[[str], "tuple[str | None, str | None, float | None, float | None]"]
"""device_id -> (kind, district, lat, lon)."""


def spec(rule: str) -> RuleSpec:
    """The rule's behaviour (unknown rules behave like generic device events)."""
    return RULES.get(rule, RULES["device_event"])


def _signal(rule: str, key: str, active: bool, device_id: str, info: DeviceInfo, ts: Any, *,
            severity: Severity | None = None, title: str = "", explanation: str = "",
            evidence: dict[str, Any] | None = None, kind: str | None = None,
            for_s: float | None = None) -> Signal:
    """``kind``: what the message itself says (the registry may not know a brand-new device yet)."""
    known, district, lat, lon = info(device_id)
    kind = known or kind
    return Signal(rule, key, active, ts, device_id, kind, district, severity or spec(rule).severity, title,
                  explanation, evidence or {}, lat, lon, for_s)


def from_finding(f: Finding, info: DeviceInfo) -> list[Signal]:
    """Signals from one detector finding (numeric or camera)."""
    if f.device_id.startswith("group:"):
        return []  # group findings are evidence on the feed; incidents already group per district
    dev = f.device_id
    evidence = {"finding": f.type, "series": f.series, "score": f.score, **f.detail}
    kind = info(dev)[0]
    if f.type == "silence":  # one metric overdue; the device as a whole is judged by its liveness
        return [_signal("metric_missing", f"metric_missing:{dev}:{f.series}", True, dev, info, f.ts,
                        title=f"{_label(kind)} {dev}: no {f.series} data", explanation=f.explanation,
                        evidence=evidence)]
    if f.type == "stale" and "gap_s" in f.detail:  # the pictures stopped (a camera that stops altogether is
        # silent by its liveness)
        return [_signal("camera_stream", f"camera_stream:{dev}:snapshots", True, dev, info, f.ts,
                        title=f"Camera {dev}: no snapshots", explanation=f.explanation, evidence=evidence)]
    if f.type == "stale":
        return [_signal("camera_stream", f"camera_stream:{dev}", True, dev, info, f.ts,
                        title=f"Camera {dev} stream degraded", explanation=f.explanation, evidence=evidence)]
    if f.type == "mains_power_lost":
        return [_signal("mains_power_lost", f"mains_power_lost:{dev}", True, dev, info, f.ts,
                        title=f"BTS {dev} on battery: mains power lost", explanation=f.explanation,
                        evidence=evidence)]
    if f.type in ("speed_collapse", "availability_drop"):
        what = "Traffic jam" if f.type == "speed_collapse" else "Availability drop"
        return [_signal(f.type, f"{f.type}:{dev}", True, dev, info, f.ts, title=f"{what} at {dev}",
                        explanation=f.explanation, evidence=evidence)]
    if f.type in ("stuck", "flatline"):
        return [_signal("sensor_stuck", f"sensor_stuck:{dev}:{f.series}", True, dev, info, f.ts,
                        title=f"{_label(kind)} {dev}: {f.series} stuck", explanation=f.explanation,
                        evidence=evidence)]
    if f.series == "snapshot" and f.type in _CAMERA_TEXT:
        return []  # camera faults come from the per-snapshot health label (see from_health), not the finding
    value = float(f.detail.get("value", 0.0))
    up = f.type in ("spike", "level_shift", "drift", "variance_change") and value > f.detail.get("expected", 0)
    limit = _KPI_LIMITS.get(f.series)
    if kind == "bts" and up and limit is not None and value >= limit[0]:
        return [_signal("kpi_degraded", f"kpi_degraded:{dev}:{f.series}", True, dev, info, f.ts, severity=limit[1],
                        title=f"BTS {dev}: {limit[2]}", explanation=f"{f.explanation} (limit {limit[0]:g})",
                        evidence=evidence)]
    return [_signal("anomaly", f"anomaly:{dev}:{f.series}", True, dev, info, f.ts,
                    title=f"Unusual {f.series} at {dev}", explanation=f.explanation, evidence=evidence)]


def from_health(device_id: str, label: str, confidence: float, ts: Any, info: DeviceInfo) -> list[Signal]:
    """Signals from a camera snapshot's health label: a fault holds while the label says so."""
    key = f"camera_fault:{device_id}"
    if label == "ok":
        return [_signal("camera_fault", key, False, device_id, info, ts)]
    severity = Severity.MAJOR if label in _CAMERA_MAJOR else Severity.MINOR
    at = (iso(ts) if isinstance(ts, datetime) else None) or str(ts)
    return [_signal("camera_fault", key, True, device_id, info, ts, severity=severity,
                    title=f"Camera {device_id}: {_CAMERA_TEXT.get(label, label)}",
                    explanation=f"snapshot analysis: {label} (confidence {confidence:.2f})",
                    evidence={"label": label, "confidence": round(confidence, 3), "snapshot_at": at,
                              "snapshot_url": f"/api/devices/{quote(device_id)}/snapshot?at={quote(at)}"},
                    for_s=OCCLUSION_HOLD_S if label == "occlusion" else None)]


def from_status(rec: StatusUpdate, info: DeviceInfo) -> list[Signal]:
    """Signals from a device's reported state (and its last will)."""
    dev, kind = rec.device_id, rec.kind
    severity = Severity.MAJOR if kind == "bts" else Severity.MINOR
    offline = _signal("device_offline", f"device_offline:{dev}", rec.state == "offline", dev, info, rec.ts,
                      severity=severity, title=f"{_label(kind)} {dev} offline",
                      explanation=f"device reports offline: {rec.reason or 'no reason given'}",
                      evidence={"state": rec.state, "reason": rec.reason}, kind=kind)
    degraded = _signal("device_degraded", f"device_degraded:{dev}", rec.state == "degraded", dev, info, rec.ts,
                       title=f"{_label(kind)} {dev} degraded", explanation=f"device reports: {rec.reason or '-'}",
                       evidence={"state": rec.state, "reason": rec.reason}, kind=kind)
    return [offline, degraded]


def silent(device_id: str, late_s: float, usual_s: float, ts: datetime, info: DeviceInfo) -> Signal:
    """A device from which nothing has arrived for far longer than usual (see :mod:`ioc.alerts.liveness`)."""
    kind = info(device_id)[0]
    return _signal("device_silent", f"device_silent:{device_id}", True, device_id, info, ts,
                   title=f"{_label(kind)} {device_id} silent",
                   explanation=f"nothing received for {duration(late_s)} (usually every {duration(usual_s)})",
                   evidence={"silent_s": round(late_s, 1), "usual_interval_s": round(usual_s, 1)})


def snapshots_back(device_id: str, ts: datetime, live: Callable[[str], dict[str, Any] | None],
                   info: DeviceInfo) -> list[Signal]:
    """A snapshot arrived: the "no snapshots" alert of that camera, if live, clears."""
    key = f"camera_stream:{device_id}:snapshots"
    return [_signal("camera_stream", key, False, device_id, info, ts)] if live(key) is not None else []


def silent_over(device_id: str, ts: datetime, info: DeviceInfo) -> Signal:
    """Something arrived from a device reported silent."""
    return _signal("device_silent", f"device_silent:{device_id}", False, device_id, info, ts)


def from_event(rec: DeviceEvent, info: DeviceInfo) -> list[Signal]:
    """Signals from a device-side alarm."""
    dev = rec.device_id
    if rec.type in _EVENT_CLEARS:
        return [_signal(rule, f"{rule}:{dev}", False, dev, info, rec.ts) for rule in _EVENT_CLEARS[rec.type]]
    rule = _EVENT_RULES.get(rec.type, "device_event")
    key = f"{rule}:{dev}" if rule != "device_event" else f"device_event:{dev}:{rec.type}"
    try:
        severity = Severity(rec.severity)
    except ValueError:
        severity = spec(rule).severity
    if rule == "mains_power_lost":
        title = f"BTS {dev} on battery: mains power lost"
    elif rule == "battery_low":
        title = f"BTS {dev} battery low"
    else:
        title = f"{_label(rec.kind)} {dev}: {rec.type.replace('_', ' ')}"
    return [_signal(rule, key, True, dev, info, rec.ts, severity=severity, title=title,
                    explanation=f"device alarm {rec.type} ({rec.severity})",
                    evidence={"event": rec.type, **rec.detail}, kind=rec.kind)]


def clears_from_reading(rec: Reading, live: Callable[[str], dict[str, Any] | None],
                        info: DeviceInfo) -> list[Signal]:
    """Clear signals a reading implies for this device's live alerts (``live(key)`` -> evidence or None).

    Data arriving ends a silence; speed back near normal ends a jam; a stuck sensor that moves again.
    """
    dev, out = rec.device_id, []
    if live(f"device_silent:{dev}") is not None:
        out.append(_signal("device_silent", f"device_silent:{dev}", False, dev, info, rec.ts))
    for metric in rec.metrics:
        if live(f"metric_missing:{dev}:{metric}") is not None:
            out.append(_signal("metric_missing", f"metric_missing:{dev}:{metric}", False, dev, info, rec.ts))
    checks = (("speed_collapse", "speed_kmh", lambda v, e: v >= 0.75 * e.get("expected", 0.0)),
              ("availability_drop", "availability_pct",
               lambda v, e: v >= e.get("expected", 100.0) - max(2 * e.get("spread", 0.0), 2.0)),
              ("mains_power_lost", "mains_power", lambda v, e: v >= 0.5))
    for rule, metric, ok in checks:
        if metric in rec.metrics:
            evidence = live(f"{rule}:{dev}")
            if evidence is not None and ok(rec.metrics[metric], evidence):
                out.append(_signal(rule, f"{rule}:{dev}", False, dev, info, rec.ts))
    for metric, value in rec.metrics.items():
        evidence = live(f"sensor_stuck:{dev}:{metric}")
        if evidence is not None and abs(value - float(evidence.get("value", value))) > 1e-9:
            out.append(_signal("sensor_stuck", f"sensor_stuck:{dev}:{metric}", False, dev, info, rec.ts))
        evidence = live(f"kpi_degraded:{dev}:{metric}")
        if evidence is not None:
            e, sd = float(evidence.get("expected", value)), float(evidence.get("spread", 0.0))
            limit = _KPI_LIMITS.get(metric, (float("inf"),))[0]
            if abs(value - e) <= max(2 * sd, 0.1 * abs(e)) or value < 0.9 * limit:
                out.append(_signal("kpi_degraded", f"kpi_degraded:{dev}:{metric}", False, dev, info, rec.ts))
    return out


def _label(kind: str | None) -> str:
    return {"bts": "BTS", "camera": "Camera", "traffic": "Traffic sensor"}.get(kind or "", "Device")
