"""When the alert stage tries a failing step or store again: after a jittered backoff, not on every tick.

While the engine's step raises without any progress (the timers alone raise: every waiting signal is applied,
undone and queued again) or the database does not take the change sets, retrying on every tick re-does the same
work for nothing: the step applies the whole queue each time (50,000 signals waiting: ~0.15 s of CPU per tick,
measured). The delays come from :class:`ingest.backoff.Backoff`; a success (or progress) resets them.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ingest.backoff import Backoff

#: Longest pause between steps while every step raises (the engine itself at fault, e.g. a stored silence it
#: cannot compare). A configuration reload (an admin's fix) makes the next tick try again at once.
STEP_RETRY_MAX_S = 30.0
#: Longest pause between tries to store the held change sets while the database does not take them (what the
#: ingest writer waits at most between its retries): the acks resume at most this long after the database is back.
FLUSH_RETRY_MAX_S = 5.0


class Retry:
    """One failing action's pace: :meth:`due` says whether to try now; :meth:`failed` / :meth:`succeeded` after.

    Args:
        base_s: the pause after the first failure (the stage's tick: the first retry is the next tick).
        max_s: the longest pause.
        clock: monotonic seconds (tests drive it).
    """

    def __init__(self, base_s: float, max_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.backoff = Backoff(base_s, max_s)
        self.clock = clock
        self._next = 0.0

    def due(self) -> bool:
        return self.clock() >= self._next

    def failed(self) -> float:
        """Count one more failure; returns the pause before the next try."""
        delay = self.backoff.next_delay()
        self._next = self.clock() + delay
        return delay

    def succeeded(self) -> None:
        self.backoff.reset()
        self._next = 0.0

    @property
    def failures(self) -> int:
        return self.backoff.attempt
