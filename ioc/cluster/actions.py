"""Officers' actions taken on any replica, applied once by the leader.

A replica that leads applies the action to its engine directly. Any other replica writes it to
``cluster_actions`` and NOTIFYs the leader, which applies it (``AlertStage.act``: stored before it
returns) and writes the resulting incident back; the replica waits for that row. An action no leader
took within ``action_timeout_s`` is marked failed (never applied later by surprise) and answered 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from ioc.alerts.model import AlertError
from ioc.alerts.stage import AlertStage
from storage import cluster as sql

logger = logging.getLogger(__name__)

ACTIONS = ("ack", "assign", "comment", "resolve", "close")


class ActionFailed(Exception):
    """The action was refused (``status`` 404, 409) or could not be applied (503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def apply_local(stage: AlertStage, action: str, incident_id: int, actor: str, note: str | None,
                      assignee: str | None) -> dict[str, Any]:
    """Apply on this process's engine (it leads); returns the incident as screens show it."""
    try:
        inc = await stage.act(action, incident_id, actor, note, assignee)
    except AlertError as err:
        raise ActionFailed(409 if incident_id in stage.engine.incidents else 404, str(err)) from None
    except ValueError as err:
        raise ActionFailed(422, str(err)) from None
    return stage.incident_view(inc) if inc.id in stage.engine.incidents else inc.to_dict()


async def apply(state: Any, action: str, incident_id: int, actor: str, note: str | None = None,
                assignee: str | None = None) -> dict[str, Any]:
    """Apply an officer's action wherever the leader is; returns the incident as it now is.

    ``state`` is the app's state: ``alerts`` (the local stage, set only while this process leads),
    ``pool``, ``process_id`` and ``cluster`` (settings).

    Raises:
        ActionFailed: refused by the engine, or no leader applied it in time.
    """
    stage: AlertStage | None = getattr(state, "alerts", None)
    if stage is not None:
        return await apply_local(stage, action, incident_id, actor, note, assignee)
    timeout = state.cluster.action_timeout_s
    async with state.pool.acquire(timeout=5) as conn:
        action_id = await sql.submit_action(conn, state.process_id, incident_id, action, actor, note, assignee)
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + timeout, 0.02
        while loop.time() < deadline:
            await asyncio.sleep(pause)
            pause = min(0.2, pause * 1.5)
            result = await sql.action_result(conn, action_id)
            if result is not None:
                return _outcome(result)
        if await sql.finish_action(conn, action_id, 0, None, "timed out: no leader applied it"):
            raise ActionFailed(503, f"no leader applied the action within {timeout:.0f} s; it was not applied")
        result = await sql.action_result(conn, action_id)  # the leader finished it just now
    return _outcome(result or {"status": "failed", "error": "lost", "result": None})


def _outcome(row: dict[str, Any]) -> dict[str, Any]:
    if row["status"] == "done":
        return dict(row["result"] or {})
    status = int((row["result"] or {}).get("status", 409))
    raise ActionFailed(status, row["error"] or "refused")


class ActionWorker:
    """On the leader: applies actions queued by other replicas (woken by NOTIFY, and polling)."""

    def __init__(self, dsn: str, pool: Any, stage: AlertStage, epoch: int, poll_s: float = 1.0) -> None:
        self.dsn, self.pool, self.stage, self.epoch, self.poll_s = dsn, pool, stage, epoch, poll_s
        self._wake = asyncio.Event()
        self._config_changed = False
        self.applied = 0

    def _on_config(self, *_: object) -> None:
        self._config_changed = True
        self._wake.set()

    async def run(self) -> None:
        conn: Any = None
        try:
            while True:
                if conn is None or conn.is_closed():
                    try:
                        conn = await asyncpg.connect(self.dsn, timeout=5)
                        await conn.add_listener(sql.CHANNEL_ACTIONS, lambda *_: self._wake.set())
                        await conn.add_listener(sql.CHANNEL_CONFIG, self._on_config)
                    except (OSError, asyncpg.PostgresError, TimeoutError) as err:
                        logger.warning("action listener not connected (%s)", err)
                        conn = None
                try:
                    if self._config_changed:
                        self._config_changed = False
                        await self.stage.reload_config()
                    await self.run_once()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
                    logger.warning("queued actions not applied yet (%s)", err)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_s)
        finally:
            if conn is not None and not conn.is_closed():
                conn.terminate()

    async def run_once(self) -> int:
        """Apply every pending action once; returns how many."""
        if not self.stage.loaded:
            return 0
        async with self.pool.acquire(timeout=5) as conn:
            pending = await sql.pending_actions(conn)
        for row in pending:
            result: dict[str, Any] | None = None
            error: str | None = None
            try:
                result = await apply_local(self.stage, row["action"], row["incident_id"], row["actor"], row["note"],
                                           row["assignee"])
            except ActionFailed as err:
                result, error = {"status": err.status}, str(err)
            except OSError as err:  # applied in memory but not stored yet: the stage retries the write
                result, error = {"status": 503}, str(err)
            async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                if self.stage.guard is not None:
                    from ioc.alerts.model import Changes

                    await self.stage.guard(conn, Changes())
                await sql.finish_action(conn, row["id"], self.epoch, result, error)
            self.applied += 1
        return len(pending)
