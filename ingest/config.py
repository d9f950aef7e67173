"""Ingest settings (sections of :class:`ioc.settings.Settings`)."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class MqttConfig(BaseModel):
    """How an ingest worker holds its MQTT session."""

    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(
        default_factory=lambda: f"ioc-ingest-{socket.gethostname()}",
        description="Stable per worker: a restarted worker resumes its persistent session under this id.")
    share_group: str | None = Field(
        "ioc-ingest", description="Shared-subscription group; workers in one group split the load. None = plain.")
    session_expiry_s: int = Field(
        7 * 24 * 3600, ge=0, description="How long the broker keeps the session (and queued messages) offline.")
    keepalive_s: int = Field(30, ge=5, le=600)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(
        5.0, gt=0, description="Longest wait between reconnection attempts. Short on purpose: Mosquitto 2.0 does not "
        "restore shared subscriptions ($share/...) after its restart, so until a worker of the group re-subscribes "
        "the broker acknowledges devices' messages and drops them (docs/ha.md, 'Broker restarts').")
    username: str | None = None
    password: str | None = None
    ca_file: str | None = Field(
        None, description="mqtts:// only: PEM CA bundle that signed the broker's certificate (default: system store).")
    cert_file: str | None = Field(None, description="mqtts:// only: client certificate (PEM), if the broker wants one.")
    key_file: str | None = Field(None, description="mqtts:// only: the client certificate's private key (PEM).")


class IngestConfig(BaseModel):
    """Batching and flow control of the DB writer."""

    model_config = ConfigDict(extra="forbid")

    batch_max_messages: int = Field(2000, ge=1, description="Flush a batch at this many messages...")
    batch_max_delay_ms: int = Field(50, ge=1, description="...or when its oldest message is this old.")
    max_pending_messages: int = Field(
        20000, ge=1, description="Unacknowledged messages held in memory; reading pauses above this bound.")
    max_pending_bytes: int = Field(
        256 * 1024 * 1024, ge=1024 * 1024, description="Payload bytes of unacknowledged messages held in memory; "
        "reading pauses above this bound too (the message bound alone let 20,000 snapshots of 4 MiB be held).")
    writers: int = Field(2, ge=1, le=16, description="Batches committed concurrently (acks stay in order).")
    write_method: Literal["copy", "unnest"] = Field(
        "copy", description="copy: COPY into a staging table (fast); unnest: array INSERT (no COPY support).")
    registry_touch_s: float = Field(
        5.0, ge=0, description="Write a device's last_seen at most this often (state changes write at once).")
    latest_every_s: float = Field(
        2.0, gt=0, description="Write the newest value of each device and metric (telemetry_latest: the API's "
        "start seed, device pages) at most this often, coalesced.")
    retry_min_s: float = Field(0.2, gt=0)
    retry_max_s: float = Field(5.0, gt=0)
    quarantine_payload_bytes: int = Field(64 * 1024, ge=256, description="Quarantined payloads are cut here.")
    quarantine_bytes_per_device_min: int = Field(
        1024 * 1024, ge=1024, description="Payload bytes of rejected messages kept per device and minute (a "
        "burst of as much too); over it a rejection keeps its first 256 bytes, its reason, length and hash "
        "(ingest/quarantine_budget.py).")
    device_bytes_per_s: int = Field(
        256 * 1024, ge=0, description="Each device's share of a process's event loop: message bytes a second (a "
        "message costs 256 plus its bytes, a snapshot a 64th of its bytes); a message its device cannot pay for is "
        "quarantined unparsed, reason device_rate (ingest/device_rate.py). 0: no bound. Applied by every process "
        "that reads the devices' messages (ingest workers, brain, live listener); the N ingest workers of a share "
        "group grant 1/N each (ingest/members.py).")
    device_burst_bytes: int = Field(
        8 * 1024 * 1024, ge=0, description="...and what a device may send at once (its bucket when full; at least "
        "the largest message, 256 KiB and 256): room for a store-and-forward device's backlog uploaded at once (a "
        "traffic sensor's 30-second readings of several weeks).")
    metrics_port: int | None = Field(None, description="Serve Prometheus metrics of `ioc ingest` on this port.")
    stall_s: float = Field(30.0, gt=0, description="Messages waiting this long with none committed (or reading "
                           "paused, or the broker link down) make the process not ready: /readyz answers 503.")
