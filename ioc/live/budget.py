"""The event loop's time spent on screens' own messages, bounded per client address.

A screen's message can cost far more than its size: a ``subscribe`` builds a snapshot of every device its filter
matches (milliseconds for a few thousand devices), one that resumes walks the ring of recent frames, a 16 MB
message is parsed and checked. A screen sending subscribes with a new filter each time, as fast as its socket
took them, held the event loop so long that another screen's handshake timed out (10 s): every screen, the
live intake and the alert stage share that loop.

So each client address has a budget (a leaky bucket of seconds): what its screens' messages cost is charged to
it (their handling, timed, and each new screen's first snapshot), it drains at ``share`` seconds a second, and
while it holds more than ``burst_s`` its screens' next messages are read only once it has drained back
(the screens are held by their own sockets' back-pressure, nothing is queued). Every screen also lets the loop
run other work between two of its messages. A screen that asks little is never held back.
"""

from __future__ import annotations

import asyncio
import time
import weakref

#: Share of the event loop that one address's screens may take for their messages, and the debt allowed at once.
SHARE = 0.1
BURST_S = 0.1


class LoopBudget:
    """One client address's debt of event-loop time."""

    def __init__(self, share: float = SHARE, burst_s: float = BURST_S, owner: Budgets | None = None) -> None:
        self.share, self.burst_s, self.owner = share, burst_s, owner
        self.debt = 0.0
        self.at = time.monotonic()

    def _drain(self) -> None:
        now = time.monotonic()
        self.debt = max(0.0, self.debt - (now - self.at) * self.share)
        self.at = now

    def charge(self, spent_s: float) -> None:
        """Its screens' work took ``spent_s`` of the loop."""
        self._drain()
        self.debt += spent_s

    def wait_s(self) -> float:
        """How long its screens' next messages must wait for the debt to drain back to the burst."""
        self._drain()
        return max(0.0, self.debt - self.burst_s) / self.share

    async def pause(self) -> None:
        """Let other work run, and wait while the address is over its budget."""
        delay = self.wait_s()
        if delay and self.owner is not None:
            self.owner.held += 1
            self.owner.held_s += delay
        await asyncio.sleep(delay)


class Budgets:
    """The budgets of the addresses that have screens open (an address's budget goes with its last screen)."""

    def __init__(self, share: float = SHARE, burst_s: float = BURST_S) -> None:
        self.share, self.burst_s = share, burst_s
        self._by_address: weakref.WeakValueDictionary[str, LoopBudget] = weakref.WeakValueDictionary()
        self.held = 0  # times a screen's next message waited for its address's budget (``GET /api/live/stats``)
        self.held_s = 0.0  # ... and for how long in all

    def get(self, address: str) -> LoopBudget:
        """The address's budget; the caller keeps it alive while its screen is open."""
        budget = self._by_address.get(address)
        if budget is None:
            budget = self._by_address[address] = LoopBudget(self.share, self.burst_s, self)
        return budget
