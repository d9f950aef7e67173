"""Storage settings (a section of :class:`ioc.settings.Settings`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StorageConfig(BaseModel):
    """How the database is laid out and kept in size."""

    model_config = ConfigDict(extra="forbid")

    timescaledb: Literal["auto", "require", "off"] = Field(
        "auto", description="Use TimescaleDB when available (auto), insist on it (require), or never (off).")
    retention_days: int = Field(90, ge=1, description="Raw telemetry, status and events older than this are dropped.")
    compress_after_days: int = Field(7, ge=1, description="TimescaleDB: compress chunks older than this.")
    partitions_ahead_days: int = Field(7, ge=1, description="Fallback backend: daily partitions created ahead.")
    rollup_5m_retention_days: int = Field(400, ge=1, description="5-minute rollups older than this are dropped.")
    rollup_1h_retention_days: int = Field(1830, ge=1, description="Hourly rollups older than this are dropped.")
    rollup_every_s: float = Field(300.0, gt=0, description="Fallback backend: how often ingest workers refresh "
                                  "the rollups (TimescaleDB refreshes them by its own policies).")
    rollup_lookback_min: int = Field(180, ge=10, description="...incrementally (only the 5-minute buckets that "
                                     "got rows, late ones included); the first refresh after an upgrade also "
                                     "recomputes this many minutes back.")
    rollup_reorder_days: float = Field(7.0, gt=0, description="Fallback backend: rebuild the hourly rollup's index "
                                       "in device order this often (REINDEX CONCURRENTLY; long charts read it).")
    snapshot_history: int = Field(20, ge=1, description="Distinct snapshots kept per camera.")
    quarantine_retention_days: int = Field(30, ge=1, description="Quarantined payloads older than this are dropped.")
    pool_size: int = Field(4, ge=1, le=64, description="asyncpg pool size per process.")
    statement_cache_size: int = Field(
        100, ge=0, description="asyncpg prepared-statement cache; 0 for poolers and single-session servers.")
