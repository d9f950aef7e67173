"""Notification settings (``IOC_ALERTS__NOTIFY__...``, a section of the alert engine settings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


class NotifyConfig(BaseModel):
    """Where notifications go, how they are signed, retried and paced."""

    model_config = ConfigDict(extra="forbid")

    public_url: str = Field("http://127.0.0.1:8000",
                            description="Base URL of the operator UI, used for the 'how to acknowledge' links.")
    display_tz: str = Field("Asia/Ho_Chi_Minh", description="Time zone of the times shown in messages (IANA name).")
    webhook_urls: list[str] = Field(default_factory=list,
                                    description="Webhook receivers; each gets every notification once.")
    webhook_secret: SecretStr | None = Field(
        None, description="Shared secret of the Standard Webhooks signature (webhook-signature header; a "
        "whsec_<base64> secret is decoded first); unset = unsigned (warned at start).")
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one webhook request.")
    smtp_host: str | None = Field(None, description="SMTP server; unset = email disabled.")
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_from: str = Field("ioc@localhost", description="From address of notification emails.")
    smtp_username: str | None = Field(None, description="SMTP login; unset = no AUTH.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        "none", description="How the SMTP connection is protected: none, starttls (upgrade a plain connection, "
        "usually port 587) or tls (implicit TLS from the first byte, 'SMTPS', usually port 465).")
    smtp_starttls: bool = Field(False, description="Older switch: true means smtp_security=starttls.")
    smtp_ca_file: str | None = Field(None, description="PEM bundle the SMTP server's certificate is checked "
                                     "against (a private CA); unset = the system's CAs.")
    smtp_timeout_s: float = Field(20.0, gt=0, description="Timeout of one SMTP conversation step.")
    retry_base_s: float = Field(2.0, gt=0, description="First retry delay; doubles each attempt (with jitter).")
    retry_max_s: float = Field(300.0, gt=0, description="Longest delay between two attempts.")
    max_attempts: int = Field(20, ge=1, description="Attempts before a notification is marked 'failed'.")
    rate_per_minute: float = Field(30.0, gt=0, description="Sustained notifications per minute per (channel, target).")
    burst: int = Field(10, ge=1, description="Notifications a (channel, target) may receive at once.")
    coalesce_after: int = Field(
        20, ge=1, description="Waiting notifications per target above which older ones of the same incident "
        "are dropped as 'superseded' (the newest per incident is kept).")
    @model_validator(mode="after")
    def _one_tls_mode(self) -> NotifyConfig:
        if self.smtp_starttls:
            if self.smtp_security == "tls":
                raise ValueError("smtp_starttls and smtp_security=tls contradict each other: choose one")
            self.smtp_security = "starttls"
        return self

    poll_s: float = Field(1.0, gt=0, description="How often the dispatcher looks for due notifications.")
    batch: int = Field(50, ge=1, description="Notifications claimed per pass.")
    lease_s: float = Field(120.0, gt=0, description="How long a claimed notification is hidden from other "
                           "dispatchers; a crashed dispatcher's claims are retried after it.")
