"""Live-feed settings (a section of :class:`ioc.settings.Settings`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ioc.geo import DEFAULT_CITY_FILE


class LiveConfig(BaseModel):
    """How the WebSocket hub buffers and where its data comes from."""

    model_config = ConfigDict(extra="forbid")

    city_file: Path = Field(DEFAULT_CITY_FILE, description="GeoJSON with district outlines (and roads).")
    listen_mqtt: bool = Field(
        True, description="Without an embedded ingest worker, follow the broker directly (plain subscription).")
    ring_size: int = Field(50_000, ge=100, description="Frames kept for clients that reconnect and resume.")
    client_queue: int = Field(2000, ge=10, description="Frames queued per client before it is marked behind.")
    heartbeat_s: float = Field(10.0, gt=0)
    batch_ms: float = Field(50.0, ge=0, le=1000, description="Frames emitted within this window go to the screens "
                            "as one WebSocket message per screen (0: one per event-loop turn, many more sends).")
    shed_after_ms: float = Field(150.0, ge=10, le=10_000, description="A replica following the broker (not an "
                                 "embedded ingest) that is this far behind on a device's telemetry or snapshot "
                                 "sets it aside and shows only the newest per device once it has caught up: "
                                 "screens stay current when the replica is short of CPU. Status and event "
                                 "messages are never set aside (ioc/live/intake.py).")
    ws_compression: bool = Field(False, description="Offer permessage-deflate on /ws/live. Off: compressing is per "
                                 "connection (every screen's copy of a batch compressed again), which cost a "
                                 "replica more than everything else it does for its screens.")
    snapshot_incidents: int = Field(200, ge=1, le=5000, description="Live incidents in the snapshot a screen gets "
                                    "on connecting, most severe first (then oldest); the snapshot says how many "
                                    "are live in all (incidents_total) and whether some were left out "
                                    "(incidents_truncated). The same default as GET /api/incidents/live.")
    incident_members: int = Field(50, ge=0, le=1000, description="Members (and devices) each incident of the "
                                  "snapshot and of incident frames carries: live ones first, then the most severe, "
                                  "then the newest; member_count, members_omitted, members_truncated and "
                                  "device_count say what was left out (its alerts page through "
                                  "/api/alerts?incident_id=). The same default as the REST members_limit.")
    initial_window_min: int = Field(15, ge=1, description="Latest values loaded from the database at start.")
    registry_sync_s: float = Field(30.0, gt=0, description="How often device positions and districts are synced "
                                   "between the live state and the registry.")


class AnalyticsConfig(BaseModel):
    """Detectors run next to the live hub (numeric in-process, cameras in worker processes)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the numeric and camera detectors on ingested data.")
    camera_processes: int = Field(2, ge=1, le=32, description="Processes analysing camera snapshots.")
    series_state_every_s: float = Field(15.0, gt=0, description="How often the brain and the partition workers "
                                        "(ioc analytics-worker) save the learned state of the devices that "
                                        "learned something since the last save (one row per device), the brain "
                                        "with the cameras' snapshot arrivals. Each saves a device at this "
                                        "interval when one of its series changed consequentially (a finding, a "
                                        "hold opened or ended, an alert record, its CUSUM, a new series, a "
                                        "silence); otherwise at most every series_state_full_every_s.")
    series_state_full_every_s: float = Field(300.0, gt=0, description="How often, at most, the brain and the "
                                             "partition workers save a device whose series only learned quietly "
                                             "since its last save (each device at its own slot in the interval, "
                                             "by a hash of its id, so the saves are spread over it). At or below "
                                             "series_state_every_s: every changed device on every pass.")
    camera_state_every_s: float = Field(1800.0, gt=0, description="How often the camera analysers' learned "
                                        "scenes are saved (about 60 KB per camera; also saved at shutdown).")
    camera_state_max_age_s: float = Field(7 * 86400.0, gt=0, description="A camera's saved scene older than "
                                          "this is not restored at start (the camera learns afresh).")
    metric_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Declared physical range per metric name, JSON {\"name\": [low, high]}, "
        "over the device contract's own (ingest/contract.py METRIC_RANGES): the numeric detectors normalise with it.")

    @field_validator("metric_ranges")
    @classmethod
    def _ranges_ordered(cls, value: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        bad = [k for k, (lo, hi) in value.items() if not lo < hi]
        if bad:
            raise ValueError(f"metric_ranges: low must be below high for {', '.join(sorted(bad))}")
        return value


class UiConfig(BaseModel):
    """The screens (wall display, operator view): language and time zone; a page's ``?lang=`` / ``?tz=``
    override them."""

    model_config = ConfigDict(extra="forbid")

    lang: Literal["vi", "en"] = Field("vi", description="Language of the screens.")
    timezone: str = Field("Asia/Ho_Chi_Minh", description="IANA time zone the screens show times in.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Asia/Ho_Chi_Minh)") from None
        return value
