"""Prometheus metrics of the ingest path (process-wide, default registry)."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_RECEIVED = Counter("ioc_ingest_messages_received", "MQTT messages received", ["channel"])
MESSAGES_COMMITTED = Counter("ioc_ingest_messages_committed", "Messages whose rows are committed", ["channel"])
VALUES_COMMITTED = Counter("ioc_ingest_values_committed", "Metric values committed (telemetry rows)")
QUARANTINED = Counter("ioc_ingest_quarantined", "Messages or batch items quarantined", ["reason"])
ACKS_SKIPPED = Counter("ioc_ingest_acks_skipped", "Committed messages not acked: their connection was lost "
                       "(the broker redelivers them; the write is idempotent)")
BATCH_MESSAGES = Histogram("ioc_ingest_batch_messages", "Messages per committed batch",
                           buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000))
COMMIT_SECONDS = Histogram("ioc_ingest_commit_seconds", "Duration of one batch transaction",
                           buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
LAG_SECONDS = Histogram("ioc_ingest_lag_seconds", "Device timestamp to commit, per telemetry reading",
                        buckets=(0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.125, 0.15, 0.2, 0.25,
                                 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10, 30, 60, 300))
PENDING = Gauge("ioc_ingest_pending_messages", "Messages received and not yet committed")
PAUSED = Gauge("ioc_ingest_paused", "1 while reading is paused by back-pressure")
DB_ERRORS = Counter("ioc_ingest_db_errors", "Failed batch writes", ["kind"])
HANDLER_ERRORS = Counter("ioc_handler_errors", "Exceptions caught while handling one message, request or "
                         "change set (each is quarantined or set aside; the stage goes on)", ["where"])
STALLED = Gauge("ioc_stalled", "1 while a part of the pipeline has work waiting and makes no progress", ["part"])
MQTT_CONNECTED = Gauge("ioc_ingest_mqtt_connected", "1 while the MQTT session is connected")


# labels() costs microseconds per call; the hot path looks children up in these caches instead.
_received: dict[str, Counter] = {}
_committed: dict[str, Counter] = {}
_quarantined: dict[str, Counter] = {}


def received(channel: str) -> Counter:
    """The received-messages counter child for ``channel``."""
    child = _received.get(channel)
    if child is None:
        child = _received[channel] = MESSAGES_RECEIVED.labels(channel)
    return child


def committed(channel: str) -> Counter:
    """The committed-messages counter child for ``channel``."""
    child = _committed.get(channel)
    if child is None:
        child = _committed[channel] = MESSAGES_COMMITTED.labels(channel)
    return child


def quarantined(reason: str) -> Counter:
    """The quarantine counter child for ``reason``."""
    child = _quarantined.get(reason)
    if child is None:
        child = _quarantined[reason] = QUARANTINED.labels(reason)
    return child


class RateLimitedLog:
    """``logger.exception`` at most once per ``every_s`` per message template: a poison stream must not fill
    the logs with a traceback per message; the suppressed count is reported with the next line."""

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger, self.every_s = logger, every_s
        self._last: dict[str, tuple[float, int]] = {}

    def log(self, template: str, *args: object) -> None:
        now = time.monotonic()
        last, suppressed = self._last.get(template, (-1e9, 0))
        if now - last < self.every_s:
            self._last[template] = (last, suppressed + 1)
            return
        self._last[template] = (now, 0)
        extra = f" ({suppressed} more like this suppressed)" if suppressed else ""
        self.logger.exception(template + extra, *args)
