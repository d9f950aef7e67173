"""Cluster settings (a section of :class:`ioc.settings.Settings`, ``IOC_CLUSTER__*``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ClusterConfig(BaseModel):
    """Lease timing, the brain's broker session, heartbeats and action hand-over."""

    model_config = ConfigDict(extra="forbid")

    lease_name: str = Field("brain", min_length=1, max_length=64,
                            description="Lease row the brain candidates compete for (one per deployment).")
    lease_ttl_s: float = Field(8.0, ge=1.0, le=300.0, description="A lease not renewed for this long expires: a "
                               "standby takes over within about lease_ttl_s + acquire_every_s.")
    renew_every_s: float = Field(2.0, gt=0, description="How often the leader renews its lease.")
    acquire_every_s: float = Field(1.0, gt=0, description="How often a standby tries to take the lease.")
    heartbeat_s: float = Field(5.0, gt=0, description="How often a process refreshes its row in cluster_members.")
    action_timeout_s: float = Field(10.0, gt=0, description="How long a replica waits for the leader to apply "
                                    "an officer's action before answering 503.")
    brain_client_id: str = Field("", max_length=64,
                                 description="MQTT client id of the brain's persistent QoS 1 session, the same "
                                             "for every candidate so that the new leader resumes the old one's "
                                             "queue (default ioc-brain-<database name>-<lease name>).")
    brain_session_expiry_s: int = Field(3600, ge=0, description="How long the broker keeps the brain's queue "
                                        "while no candidate is connected.")
    brain_restart_grace_s: int = Field(600, ge=0, description="A lone `ioc serve` (role all) stopping cleanly: how "
                                       "long the broker still keeps the brain's queue, so that the alarms of a "
                                       "restart are analysed when it is back (0: the queue ends at the stop).")
    resync_s: float = Field(30.0, gt=0, description="How often a replica reloads live incidents from the database "
                            "(besides every NOTIFY).")

    @model_validator(mode="after")
    def _renew_before_expiry(self) -> ClusterConfig:
        if self.renew_every_s * 2 > self.lease_ttl_s:
            raise ValueError("renew_every_s must be at most half of lease_ttl_s")
        return self
