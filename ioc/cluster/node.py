"""One process of the cluster: its role, its brain (if it may lead), its replica sync and its heartbeat.

Roles: ``api`` serves REST, WebSocket and pages only; ``brain`` competes for the lease and runs the
stateful stages while it holds it; ``all`` does both (the demo, small sites, tests).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from ingest.records import ParsedMessage
from ioc.cluster.brain import Brain
from ioc.cluster.embedded import EmbeddedGate
from ioc.cluster.sync import ReplicaSync
from ioc.live.client import LAG_EDGES
from ioc.settings import Settings
from storage import cluster as sql

logger = logging.getLogger(__name__)

Role = Literal["api", "brain", "all"]
ROLES: tuple[Role, ...] = ("api", "brain", "all")


def new_process_id(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def input_lag(parsed: ParsedMessage, now: datetime) -> float | None:
    """Age of the newest record of a message when it reached this process (None: no timed record)."""
    newest = max((ts for r in parsed.records if (ts := getattr(r, "ts", None)) is not None), default=None)
    return None if newest is None else max(0.0, (now - newest).total_seconds())


class Node:
    """Wires a process's cluster parts into the app's state and runs them.

    Args:
        state: the app's state (``hub``, ``pool``, ``city``; ``alerts``/``analytics`` are set while leading).
        settings: settings.
        role: api, brain or all.
        embedded_ingest: an ingest worker in this process feeds the hub and the brain (no brain session).
    """

    def __init__(self, state: Any, settings: Settings, role: Role, embedded_ingest: bool = False) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; use api, brain or all")
        self.state, self.settings, self.role = state, settings, role
        self.process_id = state.process_id = new_process_id(role)
        state.cluster = settings.cluster
        state.node = self
        self.started_at = datetime.now(UTC)
        city = state.city

        def district_name(code: str | None) -> str | None:
            district = city.get(code) if code else None
            return district.name if district else code

        self.sync = ReplicaSync(settings.database_url, state.pool, state.hub, district_name, self.process_id,
                                settings.cluster.resync_s)
        state.hub.snapshot_extra = self.sync.snapshot
        self.brain: Brain | None = None
        if role in ("brain", "all") and (settings.alerts.enabled or settings.analytics.enabled):
            # In "all" the hub has its own feed (the plain live subscription or the embedded worker).
            # A lone "all" process (demo, tests, a small site) leaves its broker session only the restart grace
            # (IOC_CLUSTER__BRAIN_RESTART_GRACE_S) at a clean shutdown, not the hour brain candidates keep it for the
            # next; an "all" process with another candidate for its lease alive keeps it (Brain._candidate_beside).
            self.brain = Brain(state, settings, self.process_id, own_input=not embedded_ingest,
                               feed_hub=role == "brain" and not embedded_ingest, discard_session=role == "all")
        # Embedded ingest: the worker's acks wait for the brain's stages as the brain session's would
        # (ioc/cluster/embedded.py); the app sets it on the worker.
        self.ingest_gate: EmbeddedGate | None = None
        if embedded_ingest and self.brain is not None:
            self.ingest_gate = EmbeddedGate(self.brain, settings.ingest.max_pending_messages,
                                            alerts=not settings.partition.nats_url)
        self._tasks: list[asyncio.Task[Any]] = []
        self.live_lag_s: float | None = None  # this process's own live feed (the screens' input)
        self._live_at: float | None = None  # monotonic time of its last timed message
        self.lag_counts = [0] * (len(LAG_EDGES) + 1)  # messages by input lag (LAG_EDGES; the last: beyond)

    def on_parsed(self, parsed: ParsedMessage) -> None:
        """Sink beside the hub's: measures the lag of the live feed this replica's screens are served from."""
        lag = input_lag(parsed, datetime.now(UTC))
        if lag is not None:
            self.live_lag_s, self._live_at = lag, time.monotonic()
            self.lag_counts[bisect.bisect_left(LAG_EDGES, lag)] += 1

    def doing(self) -> str:
        if self.brain is None:
            return "serving"
        if self.brain.leading:
            return f"leading (epoch {self.brain.epoch})"
        return "standby"

    async def start(self) -> None:
        """Start syncing, and (brain roles) try the lease once before serving, then keep competing."""
        self._tasks.append(asyncio.create_task(self.sync.run(), name="replica-sync"))
        if self.brain is not None:
            await self.brain.lease.acquire_once()
            self._tasks.append(asyncio.create_task(self.brain.lease.run(), name="lease"))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="cluster-heartbeat"))

    async def stop(self) -> None:
        """Stop competing; a leader flushes, saves and releases the lease (a standby takes over at once)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.brain is not None:
            await self.brain.lease.stop()
        try:
            async with self.state.pool.acquire(timeout=2) as conn:
                await sql.leave(conn, self.process_id)
        except Exception as err:
            logger.debug("cluster membership not removed (%s)", err)

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except Exception as err:
                logger.debug("cluster heartbeat not written (%s)", err)
            await asyncio.sleep(self.settings.cluster.heartbeat_s)

    async def heartbeat(self) -> None:
        brain = self.brain
        # input_lag_s: the brain's session while this process leads, else the live feed its screens are served from
        lag = brain.lag_s if brain is not None and brain.lag_s is not None else self.live_lag_s
        detail: dict[str, Any] = {"clients": len(self.state.hub.clients), "live_incidents": len(self.sync.live),
                                  "notifications_seen": self.sync.notifications}
        if self._live_at is not None:
            detail["live_input_lag_s"] = self.live_lag_s
            detail["live_last_message_age_s"] = round(time.monotonic() - self._live_at, 3)
        if brain is not None:
            detail["takeovers"], detail["lease"] = brain.lease.takeovers, brain.lease.name
            if brain.actions is not None:
                detail["actions_applied"] = brain.actions.applied
        async with self.state.pool.acquire(timeout=5) as conn:
            await sql.heartbeat(conn, self.process_id, self.role, socket.gethostname(), os.getpid(), self.started_at,
                                self.doing(), lag, detail)
