"""Each device's share of a process's event loop: a token bucket of message bytes, beyond which it is quarantined.

Handling a message costs the event loop of every process that reads it (ingest worker, brain, live listener)
about in proportion to its JSON bytes (parsing, records, the live hub, the stages), and the broker hands a
subscription its messages in order: 300 events of 256 KiB from one device, sent at once, held another device's
alarm behind them for 17-20 s. So each device (the topic's first four levels, as the quarantine budget counts
them) has a bucket of ``IOC_INGEST__DEVICE_BYTES_PER_S`` bytes a second, holding up to
``IOC_INGEST__DEVICE_BURST_BYTES``. A message costs :data:`MESSAGE_COST` plus its bytes (a snapshot: a 64th of
them, as its picture is decoded off the event loop); one the bucket cannot pay is not parsed but quarantined with
reason ``device_rate`` (kept: its reason, length, hash and, within the device's quarantine budget, its payload).

The defaults (256 KiB a second, bursts of 8 MiB) are far above what a device sends (a BTS, a camera or a traffic
sensor: a few messages of a few hundred bytes a second) and hold the backlog a store-and-forward device uploads at
once after weeks without a link (two weeks of a traffic sensor's 30-second readings: 4.8 MB); they bound what one
device takes of a loop to about 1.5 s at once and a few per cent after.
"""

from __future__ import annotations

import time
from datetime import datetime

from ingest.contract import MAX_JSON_BYTES
from ingest.quarantine_budget import MAX_KEYS, OUTSIDE_CONTRACT, device_key
from ingest.records import ParsedMessage, Reason, Rejection

#: What a message costs besides its bytes (its handling's fixed part, so a flood of tiny messages counts too).
MESSAGE_COST = 256
#: A snapshot's bytes count for this much less: it is checked, not parsed, on the event loop.
SNAPSHOT_DIVISOR = 64


def message_cost(topic: str, size: int) -> int:
    """The bytes of a device's bucket that a message of ``size`` bytes on ``topic`` takes."""
    return MESSAGE_COST + (size // SNAPSHOT_DIVISOR if topic.endswith("/snapshot") else size)


class DeviceRate:
    """Token buckets of message bytes per device (``bytes_per_s`` 0: no bound)."""

    def __init__(self, bytes_per_s: int, burst_bytes: int) -> None:
        self._whole = (float(bytes_per_s), float(burst_bytes))
        self.shares = 1
        self.share(1)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic time)

    def share(self, workers: int) -> None:
        """Grant each device 1/``workers`` of its share: the ingest workers of one shared subscription each read part
        of a device's messages (:mod:`ingest.members`). A bucket holding more than the new burst is cut at its next
        message."""
        self.shares = max(1, workers)
        rate, burst = self._whole
        # a full bucket takes any message the contract allows (a snapshot costs less than the JSON limit)
        self.rate = rate / self.shares
        self.burst = max(burst / self.shares, self.rate, float(MAX_JSON_BYTES + MESSAGE_COST))

    def check(self, topic: str, payload: bytes, received_at: datetime) -> ParsedMessage | None:
        """None when the message's device can pay for it (paid), else the message quarantined as ``device_rate``."""
        if self.rate <= 0:
            return None
        key = device_key(topic)
        if key == OUTSIDE_CONTRACT:  # refused from its topic alone, before any parsing
            return None
        now = time.monotonic()
        tokens, then = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        cost = message_cost(topic, len(payload))
        admitted = tokens >= cost
        if admitted:
            tokens -= cost
        if len(self._buckets) >= MAX_KEYS and key not in self._buckets:
            self._buckets.clear()  # a flood of made-up device ids: they start with a full bucket
        self._buckets[key] = (tokens, now)
        if admitted:
            return None
        detail = (f"device {key[7:]!r} over its rate: this message costs {cost} bytes, {tokens:.0f} left of a burst "
                  f"of {self.burst:.0f}, refilled at {self.rate:.0f} a second (IOC_INGEST__DEVICE_BYTES_PER_S); "
                  "not parsed")
        return ParsedMessage([], [Rejection(topic, received_at, Reason.DEVICE_RATE, detail, payload)])
