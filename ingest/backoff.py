"""The one retry backoff of the project: exponential, capped, jittered.

Every loop that waits before trying again (the ingest worker's database retries, the MQTT reconnect, the
notification dispatcher, the alert stage waiting for its database) takes its delays from here, so that
several processes that failed together (one database or broker outage) do not come back in lockstep.

Jitter is "equal jitter": the delay after ``n`` failures is drawn uniformly from ``[d/2, d]`` where
``d = min(max_s, base_s * 2**(n-1))``. Half the nominal delay is always kept (an outage is not hammered),
the other half is spread. Lives in ``ingest`` because that is the lowest layer that retries; ``ioc``
imports it.
"""

from __future__ import annotations

import asyncio
import random

__all__ = ["Backoff", "backoff_delay"]

_MAX_DOUBLINGS = 60  # 2**60 * any sane base is far past any cap; keeps the float finite


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before the next try after ``attempt`` failed attempts (1 = the first failure).

    Args:
        attempt: failures so far (values below 1 count as 1).
        base_s: nominal delay after the first failure.
        max_s: cap on the nominal delay; the result never exceeds it.
        rng: a seeded generator for reproducible tests; the module's by default.

    Returns:
        A delay in ``[d/2, d]`` seconds, ``d = min(max_s, base_s * 2**(attempt-1))``.
    """
    if base_s < 0 or max_s < 0:
        raise ValueError("backoff delays must not be negative")
    nominal = min(max_s, base_s * 2.0 ** min(max(attempt - 1, 0), _MAX_DOUBLINGS))
    return nominal * (rng or random).uniform(0.5, 1.0)


class Backoff:
    """The delays of one retry loop: call :meth:`next_delay` (or :meth:`sleep`) after each failure and
    :meth:`reset` after a success.

    Args:
        base_s: nominal delay after the first failure.
        max_s: cap on the nominal delay.
        rng: a seeded generator for reproducible tests.
    """

    __slots__ = ("_rng", "attempt", "base_s", "max_s")

    def __init__(self, base_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if base_s < 0 or max_s < 0:
            raise ValueError("backoff delays must not be negative")
        self.base_s, self.max_s, self._rng = base_s, max_s, rng
        self.attempt = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next try."""
        self.attempt += 1
        return backoff_delay(self.attempt, self.base_s, self.max_s, self._rng)

    async def sleep(self) -> float:
        """Count one more failure, wait the delay, and return it."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        """After a success: the next failure starts again from ``base_s``."""
        self.attempt = 0
