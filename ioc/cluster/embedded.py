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
        super().__init__(max_unacked)

    def sync(self) -> None:
        """Tie to the brain's current stages (new ones at each takeover); untie once they are gone."""
        analytics, alerts = self.brain.analytics, self.brain.alerts
        if analytics is self._tied[0] and alerts is self._tied[1]:
            return
        self._tied = (analytics, alerts)
        self.reset()  # the stages gone (or replaced): nothing waits for the old ones' watermarks
        if analytics is not None or alerts is not None:
            # BrainInput's attributes that tie_acks reads and sets are AckGate's (same names, same meaning)
            tie_acks(cast(BrainInput, self), analytics, alerts if self.tie_alerts else None)
            logger.info("embedded ingest: acks tied to the brain's stages (%s)",
                        ", ".join(n for n, s in (("analytics", analytics), ("alerts", alerts)) if s is not None))
