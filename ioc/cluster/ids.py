"""Alert and incident ids reserved from the database's sequences, handed to the (synchronous) engine.

The engine numbers a new alert or incident in the middle of a step; the stage tops this reserve up
before each step with at least as many ids as the step could use, so no two processes (a leader and a
paused former leader, or two replicas) ever draw the same id.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from storage.cluster import reserve_ids

logger = logging.getLogger(__name__)

_SEQUENCES = {"alert": "alerts_id_seq", "incident": "incidents_id_seq"}


class IdsExhausted(RuntimeError):
    """The step needed more ids than were reserved (the reserve's bound was wrong)."""


class IdReserve:
    """Ids drawn ahead from ``alerts_id_seq`` and ``incidents_id_seq``; call it with ``"alert"`` or ``"incident"``."""

    def __init__(self, batch: int = 64) -> None:
        self.batch = batch
        self._ids: dict[str, deque[int]] = {kind: deque() for kind in _SEQUENCES}

    def __call__(self, kind: str) -> int:
        ids = self._ids[kind]
        if not ids:
            raise IdsExhausted(f"no {kind} id reserved")
        return ids.popleft()

    def available(self, kind: str) -> int:
        return len(self._ids[kind])

    async def top_up(self, conn: Any, need: int) -> None:
        """Hold at least ``need`` ids of each kind (drawing ``batch`` more at a time)."""
        for kind, sequence in _SEQUENCES.items():
            missing = need - len(self._ids[kind])
            if missing > 0:
                self._ids[kind].extend(await reserve_ids(conn, sequence, max(missing, self.batch)))

    def clear(self) -> None:
        for ids in self._ids.values():
            ids.clear()
