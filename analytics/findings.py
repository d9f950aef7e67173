"""The finding: what every detector (numeric or camera) reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Finding:
    """One anomaly found by a detector.

    Attributes:
        device_id: the device the series or snapshot belongs to.
        series: the metric name (numeric) or ``"snapshot"`` (camera).
        ts: time of the reading that triggered the finding.
        type: machine name of the anomaly, e.g. ``"spike"``, ``"level_shift"``, ``"stuck"``,
            ``"silence"``, ``"black"``, ``"freeze"``.
        score: confidence in 0..1.
        explanation: short human sentence for a duty officer.
        detail: extra values (expected level, spread, frame index...).
    """

    device_id: str
    series: str
    ts: datetime
    type: str
    score: float
    explanation: str
    detail: dict[str, Any] = field(default_factory=dict)
