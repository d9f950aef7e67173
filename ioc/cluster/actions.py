"""Officers' actions taken on any replica, applied exactly once by the leader.

Every action is a ``cluster_actions`` row. A replica that does not lead writes it and NOTIFYs the leader;
the leader's own process writes it already taken by its epoch. The leader takes (claims) the row under its
fence, applies it to its engine, and stores the action's result **in the same transaction as its effect**
(the incident and alert rows, the audit entry): an action is never stored applied without its result, nor
done without its effect. A leader that dies or is fenced before that commit leaves the row pending and
its effect unstored; the next leader takes it again and applies it once. An action no leader took within
``action_timeout_s`` is marked failed (never applied later by surprise) and answered 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal, get_args

import asyncpg

from ioc.alerts.model import ActionUndone, AlertError, Changes
from ioc.alerts.stage import AlertStage
from storage import cluster as sql

logger = logging.getLogger(__name__)

Action = Literal["ack", "assign", "comment", "resolve", "close"]
ACTIONS: tuple[str, ...] = get_args(Action)


class ActionFailed(Exception):
    """The action was refused (``status`` 404, 409) or could not be applied (503).

    ``final``: nothing of it is applied nor waits to be stored, so the failure is its outcome (a 503 by default
    is an action applied but not stored yet: stored, with its result, once the database takes it).
    """

    def __init__(self, status: int, message: str, final: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.final = status != 503 if final is None else final


async def apply_local(stage: AlertStage, action: str, incident_id: int, actor: str, note: str | None,
                      assignee: str | None, action_id: int | None = None, epoch: int | None = None) -> dict[str, Any]:
    """Apply on this process's engine (it leads); returns the incident as screens show it.

    Raises:
        ActionFailed: refused (404, 409, 422), or applied but not stored yet (503).
    """
    try:
        inc = await stage.act(action, incident_id, actor, note, assignee, action_id=action_id, epoch=epoch)
    except AlertError as err:
        raise ActionFailed(409 if incident_id in stage.engine.incidents else 404, str(err)) from None
    except ActionUndone as err:  # the engine failed: not the caller's (422), nor applied and held (503 pending)
        raise ActionFailed(503, f"the action was not applied: the engine failed on it ({err}); nothing changed",
                           final=True) from None
    except ValueError as err:
        raise ActionFailed(422, str(err)) from None
    except OSError as err:  # kept with the stage's unsaved changes: stored (with its result) when the database is back
        raise ActionFailed(503, f"{err}") from None
    return stage.view_of(inc)


async def apply(state: Any, action: str, incident_id: int, actor: str, note: str | None = None,
                assignee: str | None = None) -> dict[str, Any]:
    """Apply an officer's action wherever the leader is; returns the incident as it now is.

    ``state`` is the app's state: ``alerts`` (the local stage, set only while this process leads),
    ``pool``, ``process_id``, ``cluster`` (settings) and ``node`` (its brain's action worker).

    Raises:
        ActionFailed: refused by the engine, or no leader applied it in time.
    """
    stage: AlertStage | None = getattr(state, "alerts", None)
    worker = getattr(getattr(getattr(state, "node", None), "brain", None), "actions", None)
    if stage is not None and worker is not None and worker.stage is stage:
        return await worker.apply_here(getattr(state, "process_id", "local"), action, incident_id, actor, note,
                                       assignee)
    if stage is not None:  # a stage without the cluster around it (no action log)
        return await apply_local(stage, action, incident_id, actor, note, assignee)
    timeout = state.cluster.action_timeout_s
    async with state.pool.acquire(timeout=5) as conn:
        action_id = await sql.submit_action(conn, state.process_id, incident_id, action, actor, note, assignee)
        result = await _wait(conn, action_id, timeout)
        if result is not None:
            return _outcome(result)
        if await sql.fail_unclaimed(conn, action_id, "timed out: no leader took it"):
            raise ActionFailed(503, f"no leader applied the action within {timeout:.0f} s; it was not applied")
        # A leader took it: its result comes with its effect (a leader that dies meanwhile leaves it to the next)
        result = await _wait(conn, action_id, timeout)
    if result is None:
        raise ActionFailed(503, "the leader took the action but has not stored it yet; it will be applied once, "
                                "when the database takes it")
    return _outcome(result)


async def _wait(conn: Any, action_id: int, timeout: float) -> dict[str, Any] | None:
    """The action's finished row, polled until ``timeout``; None if it is still pending."""
    loop = asyncio.get_running_loop()
    deadline, pause = loop.time() + timeout, 0.02
    while loop.time() < deadline:
        await asyncio.sleep(pause)
        pause = min(0.2, pause * 1.5)
        result = await sql.action_result(conn, action_id)
        if result is not None:
            return result
    return await sql.action_result(conn, action_id)


def _outcome(row: dict[str, Any]) -> dict[str, Any]:
    if row["status"] == "done":
        return dict(row["result"] or {})
    status = int((row["result"] or {}).get("status", 409))
    raise ActionFailed(status, row["error"] or "refused")


class ActionWorker:
    """On the leader: applies actions queued by other replicas (woken by NOTIFY, and polling), and its own.

    Args:
        expire_after_s: an action nobody took for this long (its replica died waiting) is failed, not applied.
    """

    def __init__(self, dsn: str, pool: Any, stage: AlertStage, epoch: int, poll_s: float = 1.0,
                 expire_after_s: float = 30.0) -> None:
        self.dsn, self.pool, self.stage, self.epoch, self.poll_s = dsn, pool, stage, epoch, poll_s
        self.expire_after_s = expire_after_s
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

    async def _fenced(self, conn: Any) -> None:
        if self.stage.guard is not None:
            await self.stage.guard(conn, Changes())

    async def run_once(self) -> int:
        """Take and apply every pending action not taken by this epoch yet; returns how many it took."""
        if not self.stage.loaded:
            return 0
        async with self.pool.acquire(timeout=5) as conn:
            pending = await sql.pending_actions(conn)
        taken = 0
        for row in pending:
            if row["epoch"] is not None and row["epoch"] >= self.epoch:
                continue  # ours: applied, its result is stored with its effect
            async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                await self._fenced(conn)  # an expiry too: a deposed leader decides nothing
                if row["epoch"] is None and row["age_s"] > self.expire_after_s:
                    await sql.fail_unclaimed(conn, row["id"], "expired: no leader took it in time")
                    continue
                if not await sql.claim_action(conn, row["id"], self.epoch):
                    continue  # finished meanwhile (or failed by its replica's timeout)
            if row["epoch"] is not None:
                logger.warning("action %d taken by epoch %d was not stored; applying it now", row["id"], row["epoch"])
            taken += 1
            with contextlib.suppress(ActionFailed):  # its replica reads the outcome from the row
                await self._apply(row["id"], row["action"], row["incident_id"], row["actor"], row["note"],
                                  row["assignee"])
        return taken

    async def apply_here(self, origin: str, action: str, incident_id: int, actor: str, note: str | None,
                         assignee: str | None) -> dict[str, Any]:
        """An action taken on the leader's own process: recorded as taken by this epoch, applied at once."""
        if not self.stage.loaded:
            raise ActionFailed(503, "the alert engine is still loading its state from the database")
        try:
            async with self.pool.acquire(timeout=5) as conn:
                action_id = await sql.submit_action(conn, origin, incident_id, action, actor, note, assignee,
                                                    epoch=self.epoch)
        except asyncpg.DataError as err:  # a value the database cannot hold (an id past 64 bits): the caller's
            raise ActionFailed(422, f"invalid value: {err}"[:300]) from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
            raise ActionFailed(503, f"the action was not recorded ({err}); it was not applied") from None
        return await self._apply(action_id, action, incident_id, actor, note, assignee)

    async def _apply(self, action_id: int, action: str, incident_id: int, actor: str, note: str | None,
                     assignee: str | None) -> dict[str, Any]:
        """Apply a taken action; a refusal is stored as its outcome (under the fence), an effect with its result."""
        try:
            out = await apply_local(self.stage, action, incident_id, actor, note, assignee, action_id, self.epoch)
        except ActionFailed as err:
            if err.final:  # refused or undone: nothing changed, the failure is the outcome
                await self._refuse(action_id, err)
            raise
        except Exception as err:
            logger.exception("action %d could not be applied", action_id)
            await self._refuse(action_id, ActionFailed(503, f"not applied: {type(err).__name__}"))
            raise ActionFailed(503, "the action could not be applied") from None
        self.applied += 1
        return out

    async def _refuse(self, action_id: int, err: ActionFailed) -> None:
        try:
            async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                await self._fenced(conn)
                await sql.finish_action(conn, action_id, self.epoch, {"status": err.status}, str(err))
        except Exception as again:  # the next leader takes it again and refuses it again
            logger.warning("refusal of action %d not stored (%s)", action_id, again)
