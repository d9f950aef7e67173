"""How much of its rejected payloads one device may have kept in the quarantine.

Every rejected message is kept (a row with its reason, its full length and a hash of it), but a device that
sends nothing but bad messages must not grow the quarantine by its link's speed: each device (the topic's
first four levels, or one shared key for topics outside the contract) has a token bucket of payload bytes.
Within it a rejection keeps its payload up to ``IOC_INGEST__QUARANTINE_PAYLOAD_BYTES``; over it, only the
first ``HEAD_BYTES`` (enough to see what the device sends).
"""

from __future__ import annotations

import time

from prometheus_client import Counter

from ingest.records import Rejection

#: What a rejection over its device's budget still keeps of its payload.
HEAD_BYTES = 256
#: Devices remembered at most (a flood of made-up device ids clears the table: they start with a full bucket).
MAX_KEYS = 100_000

CUT = Counter("ioc_quarantine_payload_cut", "Quarantined payloads cut to their head: the device's budget spent")


#: The one key of every topic outside the contract.
OUTSIDE_CONTRACT = "(outside the contract)"


def device_key(topic: str) -> str:
    parts = topic.split("/", 4)
    return "/".join(parts[:4]) if len(parts) >= 4 and parts[0] == "ioc" else OUTSIDE_CONTRACT


class QuarantineBudget:
    """Token buckets of quarantined payload bytes per device: ``bytes_per_min`` a minute, as a burst too."""

    def __init__(self, bytes_per_min: int) -> None:
        self.rate = bytes_per_min / 60.0
        self.burst = float(bytes_per_min)
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, monotonic time)

    def apply(self, rejections: list[Rejection], limit: int) -> None:
        """Set each rejection's ``keep_bytes``: ``limit`` while its device has budget, else ``HEAD_BYTES``."""
        now = time.monotonic()
        for rej in rejections:
            key = device_key(rej.topic)
            tokens, then = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            size = min(len(rej.payload), limit)
            if size <= HEAD_BYTES or tokens >= size:
                tokens -= size
            else:
                rej.keep_bytes = HEAD_BYTES
                CUT.inc()
            if len(self._buckets) >= MAX_KEYS and key not in self._buckets:
                self._buckets.clear()
            self._buckets[key] = (max(tokens, 0.0), now)
