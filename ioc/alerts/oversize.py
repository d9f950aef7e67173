"""A message whose parsing yields more alert signals than one message may: refused and set aside, then acked.

The acks wait until the step covering a message is stored, and the queue of signals is bounded
(``MAX_SIGNALS``): a signal beyond the bound is dropped and its message held for redelivery. A single message
that yields more signals than the bound (1,000 readings of 128 metrics each clear up to ~390 live alerts of
their device: ~390,000 signals) was dropped again at every redelivery: never acked, sent for ever, and every
later message held behind it. Now a message yielding more than ``MESSAGE_SIGNALS`` is not applied: one
``set_aside`` row (stage ``alerts``) says why and summarises what it held (counts per rule, devices, keys), and
once that row is stored the message is acked like any other. Its device states and arrival times still count.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import Counter

from ingest.records import ParsedMessage
from ioc.alerts.model import Changes, Signal
from storage.set_aside import set_aside

logger = logging.getLogger("ioc.alerts.stage")

#: Most alert signals one message may yield (half the hold bound: a message read while the queue is at the hold
#: still fits under ``MAX_SIGNALS``). A legitimate message yields one or two per record (1,000 records at most).
MESSAGE_SIGNALS = 25_000
_SAMPLE = 20

MESSAGES_REFUSED = Counter("ioc_alert_messages_refused", "Messages whose alert signals were refused (more than one "
                           "message may yield); set aside, then acked")


def refusal(parsed: ParsedMessage, signals: list[Signal], cap: int, position: int) -> tuple[str, str, dict[str, Any]]:
    """(what, why, summary) of a refused message, for its ``set_aside`` row; ``signals``: the first ones it
    yields, past ``cap`` (no more are built)."""
    devices = list(dict.fromkeys(s.device_id for s in signals if s.device_id))
    what = f"message {position}: more than {cap} alert signals from {len(parsed.records)} records"
    why = (f"the message yields more than {cap} alert signals (the most one message may): none of them was applied "
           "(its device states and arrival times were)")
    doc = {"position": position, "cap": cap, "records": len(parsed.records), "signals_seen": len(signals),
           "rules": dict(Tally(s.rule for s in signals).most_common()), "devices": devices[:_SAMPLE],
           "keys": list(dict.fromkeys(s.key for s in signals))[:_SAMPLE]}
    MESSAGES_REFUSED.inc()
    logger.error("alert signals of a message refused: %s; set aside, then acked", what)
    return what, why, doc


async def set_aside_messages(pool: Any, refused: list[tuple[str, str, dict[str, Any]]],
                             guard: Callable[[Any, Changes], Awaitable[None]] | None = None) -> bool:
    """Store the refused messages' rows in one transaction, behind the stage's ``guard`` (the lease's fence); False
    when the database did not take them, or the fence refused them (retried, or the stage is being stopped)."""
    try:
        async with pool.acquire(timeout=5) as conn, conn.transaction():
            if guard is not None:
                await guard(conn, Changes())
            for what, why, doc in refused:
                await set_aside(conn, "alerts", what, why, 1, doc)
    except Exception as err:
        logger.warning("refused alert messages not set aside yet (%s); retrying", err)
        return False
    return True
