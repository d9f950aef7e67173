"""The brain's lease: a row in ``cluster_lease`` taken and renewed on a dedicated connection.

Whoever holds the lease runs the stateful stages. Every takeover increments the row's epoch; every
write of a stateful stage calls :meth:`Lease.fence` inside its transaction, which checks (row lock) that
the lease still names this process with its epoch. A leader that cannot reach the database to renew
steps down on its own clock; one that was paused or starved past the lease's expiry renews it late if
nobody took it over, else finds it lost; either way a write under an old epoch is refused by the fence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from prometheus_client import Counter

from ioc.cluster.config import ClusterConfig
from storage import cluster as sql
from storage.cluster import FencedError

logger = logging.getLogger(__name__)

Callback = Callable[[int], Awaitable[None]]

REFUSED = Counter("ioc_cluster_writes_fenced", "Writes of a stateful stage refused by the lease's fence (this "
                  "process no longer leads)")

#: A missing lease row (deleted by hand, a table recreated) comes back above every epoch the brain recorded: the
#: action worker and the dispatcher judge rows by "taken by an older epoch", so an epoch that went back to 1
#: left an officer's action taken by epoch 5 pending for good, and older claims held (tests/integration/
#: test_ha_redteam.py). Only evaluated when the row is missing.
RECREATE = (
    "INSERT INTO cluster_lease (name, epoch) SELECT $1, greatest(0, (SELECT max(epoch) FROM cluster_actions), "
    "(SELECT max(claim_epoch) FROM notifications)) WHERE NOT EXISTS (SELECT 1 FROM cluster_lease WHERE name = $1) "
    "ON CONFLICT DO NOTHING")


class Lease:
    """Competes for, holds and renews one lease; calls back on gain and on loss.

    Args:
        dsn: PostgreSQL DSN (the lease uses its own connection, never the pool, so a busy pool cannot
            delay a renewal).
        config: Timing.
        holder: This process's id.
        on_acquired: Awaited with the new epoch after the lease is taken.
        on_lost: Awaited with the lost epoch when the lease is lost (or released at shutdown).
    """

    def __init__(self, dsn: str, config: ClusterConfig, holder: str, on_acquired: Callback,
                 on_lost: Callback) -> None:
        self.dsn, self.config, self.holder = dsn, config, holder
        self.name = config.lease_name
        self.on_acquired, self.on_lost = on_acquired, on_lost
        self.epoch: int | None = None
        self._deadline = 0.0  # monotonic time past which we no longer trust that we hold it
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._stopping = False
        self.takeovers = 0
        self._told_schema = False
        #: The last try found the lease held by another process, valid (not this one: it leads elsewhere).
        self.elsewhere = False
        self.refused = 0  # writes refused by the fence

    @property
    def stopping(self) -> bool:
        """True during a clean shutdown (the stages may still write: the lease is ours until released)."""
        return self._stopping

    @property
    def holding(self) -> bool:
        return self.epoch is not None and time.monotonic() < self._deadline

    async def fence(self, conn: Any) -> None:
        """Call first inside a write transaction of a stateful stage.

        Raises:
            FencedError: the lease is not ours (any more); the stages are being stopped.
        """
        epoch = self.epoch
        try:
            if epoch is None:
                raise FencedError(f"{self.holder} does not hold lease {self.name!r}")
            await sql.check_epoch(conn, self.name, self.holder, epoch)
        except FencedError:
            self.refused += 1
            REFUSED.inc()
            self.lose("a write was fenced")
            raise

    def lose(self, why: str) -> None:
        """Step down now (the run loop calls ``on_lost``)."""
        if self.epoch is not None and not self._lost.is_set():
            logger.error("lease %r epoch %s lost: %s", self.name, self.epoch, why)
            self._lost.set()

    async def _connect(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            # lock_timeout: a takeover must not hang behind a paused leader's open transaction (the server
            # ends that one after idle_in_transaction_session_timeout, see storage.cluster.check_epoch).
            self._conn = await asyncpg.connect(
                self.dsn, timeout=5, command_timeout=max(1.0, self.config.renew_every_s),
                server_settings={"application_name": f"ioc-lease {self.holder}", "lock_timeout": "2000"})
        return self._conn

    async def run(self) -> None:
        """Compete for the lease until cancelled; renew it while held."""
        try:
            while not self._stopping:
                if self.epoch is None:
                    await self._try_acquire()
                    if self.epoch is None:
                        await asyncio.sleep(self.config.acquire_every_s)
                    continue
                try:
                    await asyncio.wait_for(self._lost.wait(), self._until_renew())
                except TimeoutError:
                    # A renewal that hangs (reconnecting to a dead database) must not outlive the lease by
                    # much; one that comes late (this process was starved or paused) may still find the lease
                    # ours if nobody took it over meanwhile.
                    try:
                        await asyncio.wait_for(self._renew(), max(self.config.renew_every_s,
                                                                  self._deadline - time.monotonic()))
                    except TimeoutError:
                        await self._drop_conn()
                if self._lost.is_set() or time.monotonic() >= self._deadline:
                    await self._step_down()
        finally:
            await self.close()

    async def acquire_once(self) -> bool:
        """One attempt (at start, so a lone process leads before it serves its first request)."""
        await self._try_acquire()
        return self.epoch is not None

    def _until_renew(self) -> float:
        return max(0.0, min(self.config.renew_every_s, self._deadline - time.monotonic()))

    async def _try_acquire(self) -> None:
        sent = time.monotonic()
        try:
            conn = await self._connect()
            await conn.execute(RECREATE, self.name)
            epoch = await sql.try_acquire(conn, self.name, self.holder, self.config.lease_ttl_s)
        except asyncpg.UndefinedTableError:
            if not self._told_schema:
                self._told_schema = True
                logger.error("no cluster_lease table: run `ioc db upgrade` (migration 0008); this process will not "
                             "run analytics or alerts until then")
            await self._drop_conn()
            return
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
            logger.debug("lease %r not acquired: %s", self.name, err)
            await self._drop_conn()
            return
        self.elsewhere = epoch is None
        if epoch is None:
            return
        self.epoch, self._deadline = int(epoch), sent + self.config.lease_ttl_s
        self._lost.clear()
        self.takeovers += 1
        logger.warning("lease %r acquired by %s, epoch %d", self.name, self.holder, self.epoch)
        try:
            await self.on_acquired(self.epoch)
        except Exception:
            logger.exception("starting the stages after taking lease %r failed; giving it up", self.name)
            await self._step_down(release=True)

    async def _renew(self) -> None:
        assert self.epoch is not None
        sent = time.monotonic()
        try:
            conn = await self._connect()
            ok = await sql.renew(conn, self.name, self.holder, self.epoch, self.config.lease_ttl_s)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
            logger.warning("lease %r not renewed (%s); %.1f s left", self.name, err, self._deadline - time.monotonic())
            await self._drop_conn()
            return
        if ok:
            if sent >= self._deadline:
                logger.warning("lease %r renewed %.1f s after it expired (nobody had taken it over)", self.name,
                               sent - self._deadline)
            self._deadline = sent + self.config.lease_ttl_s
        else:
            self.lose("renewal refused (expired or taken over)")

    async def _step_down(self, release: bool = False) -> None:
        epoch, self.epoch = self.epoch, None
        self._deadline = 0.0
        self._lost.clear()
        if epoch is None:
            return
        try:
            await self.on_lost(epoch)
        except Exception:
            logger.exception("stopping the stages after losing lease %r failed", self.name)
        if release:
            await self._release(epoch)

    async def _release(self, epoch: int) -> None:
        try:
            conn = await self._connect()
            if await sql.release(conn, self.name, self.holder, epoch):
                logger.info("lease %r epoch %d released", self.name, epoch)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
            logger.warning("lease %r not released (%s); it expires on its own", self.name, err)

    async def stop(self) -> None:
        """Clean shutdown: stop the stages (they may still write: the lease is still ours), then release."""
        self._stopping = True
        epoch = self.epoch
        if epoch is not None:
            try:
                await self.on_lost(epoch)
            except Exception:
                logger.exception("stopping the stages at shutdown failed")
            self.epoch = None
            await self._release(epoch)
        await self.close()

    async def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2)
            except (OSError, TimeoutError, asyncpg.InterfaceError):
                conn.terminate()


__all__ = ["FencedError", "Lease"]
