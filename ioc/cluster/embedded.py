"""Embedded-ingest mode (``ioc serve --ingest``, the demo): the ingest worker of this process feeds the brain.

There is no brain session then (``Brain(own_input=False)``): the worker's sinks hand every message to the
stages while the brain leads. :class:`EmbeddedGate` gives the worker's acks what ``BrainInput`` gives the
brain's (``tie_acks``, the same wiring): the stages see each message's sequence and MQTT DUP flag (a snapshot
the broker sends again after a reconnection is a copy, not a frozen picture), and a message is acked only once
the alert step covering it is stored; a signal dropped at the alert queue's bound holds the acks before its
message until the worker's session had the broker send it again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, cast

from ingest.ack_gate import AckGate
from ioc.cluster.brain import Brain, BrainInput, tie_acks

if TYPE_CHECKING:
    from ioc.alerts.stage import AlertStage
    from ioc.analytics_stage import AnalyticsStage

logger = logging.getLogger(__name__)


class EmbeddedGate(AckGate):
    """The ingest worker's ack gate, tied to the brain's stages while it leads (re-tied at each takeover).

    Args:
        brain: this process's brain (``own_input=False``).
        max_unacked: the worker's ``max_pending_messages``.
        alerts: tie the acks to the alert stage (False: only the DUP flag and the sequence reach the stages; for
            partitioned analytics, whose findings input ties the alert stage's position itself).
    """

    def __init__(self, brain: Brain, max_unacked: int, alerts: bool = True) -> None:
        self.brain, self.tie_alerts = brain, alerts
        self._tied: tuple[AnalyticsStage | None, AlertStage | None] = (None, None)
        # Stages lost mid-flight (the lease, not a clean stop): nothing after this sequence is acked until stages
        # of this process store it, sent again by the broker; None: nothing held
        self.held_after: int | None = None
        super().__init__(max_unacked)

    def sync(self) -> None:
        """Tie to the brain's current stages (new ones at each takeover); untie once they are gone.

        Stages that go away without a clean stop leave what they were handed and had not stored: it stays unacked
        (the acks after it too: they go in order) until this process leads again, and then the next stages have
        the broker send it again (their ``lost_after``, as after a drop). While another process leads, the hold is
        let go: that leader never reads this worker's messages (docs/ha.md).
        """
        analytics, alerts = self.brain.analytics, self.brain.alerts
        if analytics is self._tied[0] and alerts is self._tied[1]:
            if self.held_after is not None and alerts is None and self.brain.lease.elsewhere:
                logger.error("embedded ingest: another process leads; the messages after %d its stages had not "
                             "stored are acked (their alerts are lost)", self.held_after)
                self.held_after = None
                self.reset()
            return
        old = self._tied[1] if self.tie_alerts else None
        if old is not None and not self.brain.lease.stopping:
            lost = self.lost()
            stored = self.settled() if lost is None else min(self.settled(), lost)
            if stored < self.seq:
                self.held_after = stored if self.held_after is None else min(self.held_after, stored)
                logger.warning("embedded ingest: stages stopped without storing past message %d; the %d after it "
                               "are held for the next stages of this process", stored, self.seq - stored)
        self._tied = (analytics, alerts)
        self.reset()  # the stages gone (or replaced): nothing waits for the old ones' watermarks
        held = self.held_after
        if held is not None:
            self.settled = lambda: held
        if analytics is not None or alerts is not None:
            # BrainInput's attributes that tie_acks reads and sets are AckGate's (same names, same meaning)
            tie_acks(cast(BrainInput, self), analytics, alerts if self.tie_alerts else None)
            if held is not None and alerts is not None and self.tie_alerts:
                alerts.lost_after, self.held_after = held, None  # the worker reconnects once it is acked up to it
            logger.info("embedded ingest: acks tied to the brain's stages (%s)",
                        ", ".join(n for n, s in (("analytics", analytics), ("alerts", alerts)) if s is not None))
