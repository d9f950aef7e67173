"""Short human explanations for numeric findings."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

_UNITS = {"speed_kmh": " km/h", "occupancy_pct": "%", "flow_veh_h": " veh/h", "battery_pct": "%",
          "availability_pct": "%", "temperature_c": " °C"}
_LABELS = {"speed_kmh": "speed", "occupancy_pct": "occupancy", "flow_veh_h": "flow", "battery_pct": "battery",
           "availability_pct": "availability", "mains_power": "mains power"}
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def num(v: float) -> str:
    """Compact number: 3 significant digits, no exponent for everyday magnitudes."""
    if not np.isfinite(v):
        return "n/a"
    if abs(v) < 5e-4:
        return "0"  # a spread of a constant series: noise digits would only confuse
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h': a duration as a duty officer reads it."""
    if seconds < 120:
        return f"{num(seconds)} s"
    if seconds < 7200:
        return f"{num(seconds / 60)} min"
    return f"{num(seconds / 3600)} h"


def slot(ts: datetime) -> str:
    """'Tuesday 08:00': the half-hour slot of the week the expectation was learned for."""
    t = ts.astimezone(UTC) if ts.tzinfo else ts
    return f"{_WEEKDAYS[t.weekday()]} {t.hour:02d}:{30 * (t.minute // 30):02d}"


def label(metric: str) -> str:
    """Human name of a metric ('speed_kmh' -> 'speed')."""
    return _LABELS.get(metric, metric)


def value(metric: str, v: float) -> str:
    """Value with the metric's unit."""
    return f"{num(v)}{_UNITS.get(metric, '')}"


_VERBS = {
    "spike": "unusually high",
    "dip": "unusually low",
    "level_shift": "level shifted",
    "variance_change": "fluctuating far more than usual",
    "flatline": "stopped fluctuating",
    "stuck": "stuck at the same value",
    "drift": "drifted away from its long-term level",
    "pattern": "unusual pattern",
}


def explain(kind: str, metric: str, ts: datetime, v: float, expected: float, spread: float,
            seasonal: bool, record: str = "", history_s: float = 0.0) -> str:
    """E.g. 'speed 12 km/h vs usual 48±6 for Tuesday 08:00 (unusually low)'.

    ``record`` ("high"/"low") says the value lies beyond everything seen over ``history_s`` seconds.
    """
    when = f" for {slot(ts)}" if seasonal else ""
    what = _VERBS.get(kind, kind.replace("_", " "))
    if record:
        span = f"{num(history_s / 86400.0)} days" if history_s >= 2 * 86400.0 else f"{num(history_s / 3600.0)} h"
        what = f"{'higher' if record == 'high' else 'lower'} than anything in {span}; {what}"
    return f"{label(metric)} {value(metric, v)} vs usual {num(expected)}±{num(spread)}{when} ({what})"
