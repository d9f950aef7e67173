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
    reopen_within_s: float = Field(1800.0, ge=0, description="A problem back this soon after its incident "
                                   "resolved reopens that incident instead of opening a new one.")
    reload_s: float = Field(30.0, gt=0, description="How often silences, roster and policies are re-read.")
    silent_factor: float = Field(3.5, gt=1, description="A device is silent after this many of its usual gaps "
                                 "between messages without any...")
    silent_min_s: float = Field(90.0, gt=0, description="...and never before this many seconds.")
    stalled_share: float = Field(0.5, gt=0, le=1, description="When more than this share of devices falls "
                                 "quiet at once the input is taken as stalled and no silence alert is raised.")
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
