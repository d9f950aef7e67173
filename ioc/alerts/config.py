"""Alert settings (a section of :class:`ioc.settings.Settings`: ``IOC_ALERTS__...``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ioc.alerts.notify.config import NotifyConfig


class AlertsConfig(BaseModel):
    """The alert engine next to the live hub, and how it notifies."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run the alert engine in this process (one engine per database).")
    tick_s: float = Field(1.0, gt=0, description="How often signals are applied and timers advanced.")
    close_after_s: float = Field(3600.0, ge=0, description="Resolved alerts and incidents close after this.")
    reload_s: float = Field(30.0, gt=0, description="How often silences, roster and policies are re-read.")
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
