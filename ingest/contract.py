"""The device API as constants: topic layout, kinds, channels, limits and the standard metric catalogue.

``docs/device-api.md`` is the prose version of this module; keep them in step.
"""

from __future__ import annotations

import re
from typing import Final

TOPIC_PREFIX: Final = "ioc/v1"
#: Topic filter the ingest workers subscribe to (wrapped in ``$share/<group>/`` for scale-out).
SUBSCRIPTION: Final = "ioc/v1/#"

KINDS: Final = frozenset({"camera", "bts", "traffic"})
CHANNELS: Final = frozenset({"telemetry", "status", "event", "snapshot"})
#: Channels allowed per kind (snapshots are camera-only).
CHANNELS_BY_KIND: Final = {
    "camera": frozenset({"telemetry", "status", "event", "snapshot"}),
    "bts": frozenset({"telemetry", "status", "event"}),
    "traffic": frozenset({"telemetry", "status", "event"}),
}
DEVICE_ID_RE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
METRIC_NAME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
EVENT_TYPE_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")

STATES: Final = frozenset({"online", "offline", "degraded"})
SEVERITIES: Final = frozenset({"critical", "major", "minor", "warning", "info"})

MAX_JSON_BYTES: Final = 256 * 1024
MAX_SNAPSHOT_BYTES: Final = 4 * 1024 * 1024
#: A gateway batch may carry at most this many readings.
MAX_BATCH_ITEMS: Final = 1000
MAX_METRICS_PER_READING: Final = 128
MAX_FUTURE_SECONDS: Final = 300.0
#: Snapshot pictures: caps read from the JPEG frame header before anything decodes it (a 4 KB file may claim
#: 30000x30000 pixels: 2.7 GB to decode). 4096x4096 covers every 4K/8 MP camera.
MAX_IMAGE_WIDTH: Final = 8192
MAX_IMAGE_HEIGHT: Final = 8192
MAX_IMAGE_PIXELS: Final = 4096 * 4096
#: Scans (SOS markers) a snapshot may hold: each scan is a pass of the decoder over every block of the picture,
#: whatever few bytes it takes, so 460 KB of repeated empty scans held a camera shard 2 minutes (4096x4096, 10-30 ms
#: a scan; 4 MiB: over 20 minutes). Baseline JPEGs have 1 (or one per component), libjpeg's progressive ones 6-10.
MAX_JPEG_SCANS: Final = 32
#: Distinct metric names one device may use (per ingest process): beyond it readings are quarantined, so a device
#: cannot grow the live state, the detectors and the series count without bound.
MAX_METRICS_PER_DEVICE: Final = 128
#: Distinct event types one device may send (per process): each new type is a new alert of its incident.
MAX_EVENT_TYPES_PER_DEVICE: Final = 64
#: A metric value beyond ±this is refused (quarantined, reason non_finite): no quantity a device measures comes
#: near it, and sums of values near float8's limit (±1.8e308) overflow in PostgreSQL, so a device sending
#: ±1e308 stopped every rollup refresh of its bucket (and, at each retry, all the others with it).
MAX_ABS_VALUE: Final = 1e100
#: Timestamps before this are refused: usually epoch seconds sent where milliseconds are expected.
MIN_TS_EPOCH_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z

#: Standard metrics per kind: name -> (unit, description). Unknown names are stored too.
METRICS: Final[dict[str, dict[str, tuple[str, str]]]] = {
    "traffic": {
        "flow_veh_h": ("veh/h", "vehicles per hour over the detector, all lanes"),
        "speed_kmh": ("km/h", "mean spot speed"),
        "occupancy_pct": ("%", "share of time the detector is occupied"),
        "queue_len_m": ("m", "estimated queue length upstream"),
        "heavy_vehicle_pct": ("%", "share of trucks and buses in the flow"),
    },
    "bts": {
        "availability_pct": ("%", "cell availability over the reporting period"),
        "prb_util_pct": ("%", "physical resource block utilisation (load)"),
        "active_users": ("users", "connected user equipments"),
        "throughput_mbps": ("Mbit/s", "downlink throughput"),
        "drop_call_rate_pct": ("%", "dropped calls / established calls"),
        "mains_power": ("0/1", "1 when on mains power, 0 when on battery or generator"),
        "battery_pct": ("%", "battery state of charge"),
        "temperature_c": ("°C", "shelter / cabinet temperature"),
        "rssi_dbm": ("dBm", "mean received signal strength"),
    },
    "camera": {
        "fps": ("frames/s", "encoded frame rate"),
        "bitrate_kbps": ("kbit/s", "stream bitrate"),
        "temperature_c": ("°C", "housing temperature"),
        "storage_free_pct": ("%", "free space on the edge recorder"),
    },
}


#: Declared physical ranges of standard metrics: name -> (low, high) in the metric's unit (H8, issue #17).
#: The numeric detectors normalise a series with its declared range from its first reading (otherwise with
#: the range it has covered so far). Metrics whose range depends on the site (flow, queue, users,
#: throughput, frame rate, bitrate) are not declared here; a deployment adds or overrides ranges with
#: ``IOC_ANALYTICS__METRIC_RANGES`` (JSON, e.g. ``{"flow_veh_h": [0, 6000]}``).
METRIC_RANGES: Final[dict[str, tuple[float, float]]] = {
    "speed_kmh": (0.0, 130.0),
    "occupancy_pct": (0.0, 100.0),
    "heavy_vehicle_pct": (0.0, 100.0),
    "availability_pct": (0.0, 100.0),
    "prb_util_pct": (0.0, 100.0),
    "drop_call_rate_pct": (0.0, 100.0),
    "mains_power": (0.0, 1.0),
    "battery_pct": (0.0, 100.0),
    "temperature_c": (-20.0, 80.0),
    "rssi_dbm": (-140.0, -40.0),
    "storage_free_pct": (0.0, 100.0),
}


def topic_for(kind: str, device_id: str, channel: str) -> str:
    """Build the topic a device publishes on."""
    return f"{TOPIC_PREFIX}/{kind}/{device_id}/{channel}"
