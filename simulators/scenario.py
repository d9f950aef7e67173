"""What to simulate: city, fleet sizes, reporting intervals and incidents, from a JSON/TOML file or code."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

logger = logging.getLogger(__name__)

IncidentKind = Literal["congestion", "accident", "power_outage", "bts_degradation", "camera_fault",
                       "device_silent", "sensor_stuck"]
INCIDENT_KINDS: tuple[IncidentKind, ...] = get_args(IncidentKind)
CAMERA_FAULT_MODES: tuple[str, ...] = ("black", "frozen", "blurred", "covered", "repointed")

#: Fleet size presets: (BTS cells, BTS sites, cameras, traffic sensors).
SCALES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (6, 3, 3, 6),
    "small": (60, 29, 20, 30),
    "district": (600, 293, 200, 100),
    "province": (3240, 1582, 1000, 500),
}


class Intervals(BaseModel):
    """Reporting periods in simulated seconds."""

    model_config = ConfigDict(extra="forbid")

    traffic_s: float = Field(30.0, gt=0, description="traffic sensor telemetry period")
    bts_s: float = Field(60.0, gt=0, description="BTS telemetry period")
    camera_s: float = Field(60.0, gt=0, description="camera telemetry (fps, bitrate…) period")
    snapshot_s: float = Field(60.0, gt=0, description="camera JPEG snapshot period")


class IncidentSpec(BaseModel):
    """One scheduled incident. Unset targets and times are drawn from the scenario seed."""

    model_config = ConfigDict(extra="forbid")

    kind: IncidentKind
    at: float | str | None = Field(None, description="seconds after the simulated start, or an RFC 3339 time")
    duration_s: float | None = Field(None, gt=0)
    device: str | None = Field(None, description="target device id (with or without the id prefix)")
    district: str | None = Field(None, description="target district code (power_outage)")
    road: str | None = Field(None, description="target road id (congestion)")
    params: dict[str, Any] = Field(default_factory=dict)


class RandomIncidents(BaseModel):
    """Incidents drawn at random (seeded) over the simulated span."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(0, ge=0)
    kinds: list[IncidentKind] = Field(default_factory=lambda: list(INCIDENT_KINDS))


class Scenario(BaseModel):
    """Everything that decides *what* is simulated (the run options decide how and where)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "default"
    city: str = Field("haiphong", description="bundled city name (simulators/data/<name>.json) or a path")
    id_prefix: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,40}$",
                                  description="device id prefix; defaults to the city code (HP)")
    seed: int = 1
    scale: Literal["tiny", "small", "district", "province"] = "small"
    bts: int | None = Field(None, ge=0)
    bts_sites: int | None = Field(None, ge=0)
    cameras: int | None = Field(None, ge=0)
    traffic: int | None = Field(None, ge=0)
    intervals: Intervals = Field(default_factory=Intervals)
    snapshot_width: int = Field(640, ge=64, le=3840)
    snapshot_height: int = Field(360, ge=64, le=2160)
    jpeg_quality: int = Field(80, ge=10, le=100)
    incidents: list[IncidentSpec] = Field(default_factory=list)
    random_incidents: RandomIncidents = Field(default_factory=RandomIncidents)

    @model_validator(mode="after")
    def _fill_sizes(self) -> Scenario:
        bts, sites, cams, trf = SCALES[self.scale]
        if self.bts is None:
            self.bts = bts
        if self.bts_sites is None:
            # Keep the preset's cells-per-site ratio when only the cell count was given.
            self.bts_sites = sites if self.bts == bts else max(1, round(self.bts * sites / max(1, bts)))
        if self.cameras is None:
            self.cameras = cams
        if self.traffic is None:
            self.traffic = trf
        if self.bts and not self.bts_sites:
            raise ValueError("bts_sites must be at least 1 when there are BTS cells")
        if self.bts_sites and self.bts_sites > self.bts:
            raise ValueError("bts_sites cannot exceed bts (each site has at least one cell)")
        return self

    @property
    def sizes(self) -> tuple[int, int, int, int]:
        """(bts, bts_sites, cameras, traffic) after presets are applied."""
        return (self.bts or 0, self.bts_sites or 0, self.cameras or 0, self.traffic or 0)


def load_scenario(path: str | Path, **overrides: Any) -> Scenario:
    """Read a scenario from a ``.json`` or ``.toml`` file; keyword overrides win (None values are ignored)."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    data: dict[str, Any] = tomllib.loads(text) if p.suffix.lower() == ".toml" else json.loads(text)
    data.update({k: v for k, v in overrides.items() if v is not None})
    if "scale" in overrides and overrides["scale"] is not None:
        # A preset given on the command line replaces the file's explicit sizes.
        for key in ("bts", "bts_sites", "cameras", "traffic"):
            if overrides.get(key) is None:
                data.pop(key, None)
    return Scenario.model_validate(data)
