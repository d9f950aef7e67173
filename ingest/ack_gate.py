"""What an ingest worker's acks wait for besides its own commit: the stages its sinks feed.

An ingest worker acks a message once the rows holding it are committed. When its sinks also feed stateful
stages that must store what a message caused before the broker may forget it (the brain's analytics and
alert stages inside ``ioc serve --ingest`` and the demo: ``ioc.cluster.embedded``), the worker also waits for
an :class:`AckGate`. It has the shape of the brain's own input (``ioc.cluster.brain.BrainInput``) so that
``tie_acks`` wires either to the stages: ``seq`` numbers the messages handed to the sinks, ``redelivered``
is the MQTT DUP flag of the one being handed, and the stages set ``settled`` (the highest sequence whose
effects are stored), ``hold`` / ``has_room`` (back-pressure), ``lost`` (a stage dropped input after that
sequence: nothing past it may be acked until the broker sent it again) and ``redelivering`` (it is being sent
again). Untied (:meth:`AckGate.reset`), the acks follow the commit alone.
"""

from __future__ import annotations

from collections.abc import Callable


class AckGate:
    """Sequence numbers, the DUP flag, and the stages' watermarks for an ingest worker's acks.

    Args:
        max_unacked: the worker's bound on unacknowledged messages (``max_pending_messages``).
    """

    settled: Callable[[], int]
    hold: Callable[[], bool]
    has_room: Callable[[], bool]
    lost: Callable[[], int | None]
    redelivering: Callable[[], None]

    def __init__(self, max_unacked: int) -> None:
        self.seq = 0  # sequence number of the last message handed to the sinks
        self.redelivered = False  # the message being handed was sent to this session before (DUP)
        # After a redelivery the unacked bound shrinks to half of what was unacked (a burst handed over after the
        # pause then adds less, so the drops end), and doubles back each time a window's worth is stored.
        self.max_unacked = self.window = max(1, max_unacked)
        self._widen_at = 0
        self.redeliveries = 0
        self.reset()

    def reset(self) -> None:
        """No stage downstream: every message is settled once handed over (the acks follow the commit)."""
        self.settled = lambda: self.seq
        self.hold = lambda: False
        self.has_room = lambda: True
        self.lost = lambda: None
        self.redelivering = lambda: None

    def sync(self) -> None:
        """Called before each message and each ack pass: a subclass re-ties itself to stages that changed."""

    def received(self, dup: bool) -> None:
        """A message is about to be handed to the sinks (on the event loop, before them)."""
        self.sync()
        self.seq += 1
        self.redelivered = dup

    def narrowed(self, unacked: int) -> None:
        """The broker is made to send the unacked messages again: the window becomes half of what was unacked."""
        self.window = max(1, min(self.window, unacked) // 2)
        self.redeliveries += 1
        self._widen_at = self.seq + self.window

    def widen(self) -> None:
        """Double the window back towards ``max_unacked`` once a window's worth after the last change is stored."""
        if self.window < self.max_unacked and self.settled() >= self._widen_at:
            self.window = min(self.max_unacked, 2 * self.window)
            self._widen_at = self.seq + self.window
