"""Pacing: a token bucket per (channel, target). Pure; time is passed in. (Retry delays: ingest/backoff.py.)

A limited notification is deferred until a token is available, never dropped; the dispatcher collapses
a storm separately (older waiting messages of the same incident are superseded by the newest).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass(slots=True)
class TokenBucket:
    """``burst`` tokens, refilled at ``rate_per_s``; one token per notification."""

    rate_per_s: float
    burst: float
    tokens: float
    updated: float

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
            self.updated = now

    def take(self, now: float) -> float:
        """Take a token: return 0.0 when granted, else the seconds until one is available."""
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s

    def full(self, now: float) -> bool:
        """True when the bucket has refilled completely (it can be forgotten)."""
        self._refill(now)
        return self.tokens >= self.burst


class RateLimiter:
    """Token buckets keyed by (channel, target).

    Args:
        rate_per_minute: Sustained rate per key.
        burst: Notifications a key may receive back to back.
        max_keys: Above this many buckets, full (idle) ones are forgotten to bound memory.
    """

    def __init__(self, rate_per_minute: float, burst: int, max_keys: int = 10_000) -> None:
        if rate_per_minute <= 0 or burst < 1:
            raise ValueError("rate_per_minute must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: dict[Key, TokenBucket] = {}

    def acquire(self, key: Key, now: float) -> float:
        """Take a token for ``key``: 0.0 when sending may go ahead, else seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, self.burst, now)
        return bucket.take(now)

    def _prune(self, now: float) -> None:
        # A full bucket behaves exactly like a new one, so forgetting it changes nothing.
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)

