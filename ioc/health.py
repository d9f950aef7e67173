"""Health that tells the truth: a process is ready only while every part of its pipeline makes progress.

Each long-running part (ingest worker, live listener, analytics stage, alert stage) reports what keeps it
from making progress while work waits (``health_problems() -> list[str]``, empty when healthy): messages
delivered and not acknowledged, a flush failing, a camera shard dead, the broker link down. /readyz answers
503 with those sentences, ``ioc_stalled{part}`` says it to Prometheus, and the live hub's heartbeat carries
them so the wall shows the operator that the picture has stopped (not only when a socket is down).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from ingest.metrics import STALLED

logger = logging.getLogger(__name__)

#: The parts a process may run, as attributes of ``app.state``.
PARTS = ("worker", "listener", "analytics", "alerts")


class Reports(Protocol):
    def health_problems(self) -> list[str]: ...


def pipeline_problems(state: Any) -> list[str]:
    """Every running part's problems (a part whose check itself fails reports that)."""
    problems: list[str] = []
    for part in PARTS:
        source: Reports | None = getattr(state, part, None)
        check = getattr(source, "health_problems", None)
        if check is None:
            continue
        try:
            found = list(check())
        except Exception as err:  # a broken check is itself a problem, not a crash of /readyz
            found = [f"{part}: health check raised {type(err).__name__}: {err}"]
        STALLED.labels(part).set(1 if found else 0)
        problems += found
    return problems


async def watch(state: Any, every_s: float = 5.0) -> None:
    """Keep the hub's view of the pipeline's health current (it rides on every heartbeat)."""
    last: list[str] = []
    while True:
        problems = pipeline_problems(state)
        if problems != last:
            (logger.warning if problems else logger.info)("pipeline health: %s", "; ".join(problems) or "ok")
            last = problems
        hub = getattr(state, "hub", None)
        if hub is not None:
            hub.problems = problems
        await asyncio.sleep(every_s)
