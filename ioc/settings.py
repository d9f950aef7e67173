"""The one settings object, read from the environment (prefix ``IOC_``, nested sections with ``__``).

Examples: ``IOC_DATABASE_URL``, ``IOC_MQTT_URL``, ``IOC_INGEST__BATCH_MAX_MESSAGES``,
``IOC_STORAGE__TIMESCALEDB``. Every setting, with its default, is in ``.env.example``.
Built in entry points (CLI, app factory), never at import time.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ingest.config import IngestConfig, MqttConfig
from ingest.tls import TlsOptions, check_url, default_port, url_uses_tls
from ioc.alerts.config import AlertsConfig
from ioc.auth.config import AuthConfig
from ioc.cluster.config import ClusterConfig
from ioc.live.config import AnalyticsConfig, LiveConfig, UiConfig
from ioc.partition.config import PartitionConfig
from storage.config import StorageConfig


class Settings(BaseSettings):
    """Everything a process of the IOC needs to know about its environment."""

    # hide_input_in_errors: a refused URL may carry a password; it must not reach the logs.
    model_config = SettingsConfigDict(env_prefix="IOC_", env_nested_delimiter="__", extra="ignore",
                                      hide_input_in_errors=True)

    database_url: str = Field("postgresql://postgres@127.0.0.1:5432/postgres",
                              description="PostgreSQL / TimescaleDB DSN.")
    mqtt_url: str = Field("mqtt://127.0.0.1:1883",
                          description="Broker URL: mqtt://[user:pass@]host[:port], or mqtts:// for TLS (port 8883).")
    log_level: str = "INFO"
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    live: LiveConfig = Field(default_factory=LiveConfig)
    analytics: AnalyticsConfig = Field(default_factory=AnalyticsConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        try:
            return check_url(value)
        except ValueError:
            raise ValueError("IOC_MQTT_URL must look like mqtt://host:1883 or mqtts://host:8883") from None

    @property
    def mqtt_host(self) -> str:
        return urlsplit(self.mqtt_url).hostname or "127.0.0.1"

    @property
    def mqtt_port(self) -> int:
        return default_port(self.mqtt_url)

    @property
    def mqtt_tls(self) -> TlsOptions | None:
        """TLS files for an ``mqtts://`` URL (from the mqtt section); None for plain ``mqtt://``."""
        if not url_uses_tls(self.mqtt_url):
            return None
        return TlsOptions(self.mqtt.ca_file, self.mqtt.cert_file, self.mqtt.key_file)

    @property
    def mqtt_credentials(self) -> tuple[str | None, str | None]:
        """Username and password from the URL, else from the mqtt section."""
        parts = urlsplit(self.mqtt_url)
        return (parts.username or self.mqtt.username, parts.password or self.mqtt.password)
