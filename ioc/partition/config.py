"""Settings of the partitioned analytics stream (a section of :class:`ioc.settings.Settings`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PartitionConfig(BaseModel):
    """Where the reading stream lives and how it is cut."""

    model_config = ConfigDict(extra="forbid")

    nats_url: str | None = Field(None, description="NATS with JetStream, e.g. nats://127.0.0.1:4222. Set: ingest "
                                 "workers put committed readings on the stream for `ioc analytics-worker`s.")
    stream: str = Field("IOC_READINGS", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="JetStream stream name "
                        "(subjects <stream>.<partition>).")
    partitions: int = Field(32, ge=1, le=1024, description="Partitions of the stream (by district); more than "
                            "the workers you will ever run.")
    max_age_s: float = Field(24 * 3600.0, gt=0, description="How long the stream keeps readings (replay window).")
    rebalance_s: float = Field(2.0, gt=0, description="How often a worker renews its partition leases and takes or "
                               "gives back partitions.")
    lease_ttl_s: float = Field(10.0, gt=0, description="A partition whose worker stopped renewing (dead, paused) "
                               "is taken over after this long; at least twice rebalance_s.")

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> PartitionConfig:
        if self.rebalance_s * 2 > self.lease_ttl_s:
            raise ValueError("rebalance_s must be at most half of lease_ttl_s")
        return self
