"""Loading and saving what the analytics stage learned: the numeric monitor per device (in two tiers,
analytics/numeric/save_tiers.py) with the group rules' episode memory (analytics/numeric/episodes.py), the
cameras' snapshot arrivals and the camera analysers' scenes.

A mixin of :class:`ioc.analytics_stage.AnalyticsStage` (kept apart so the stage's detection stays one
readable module); the stage provides the state and the camera shards below.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from analytics.camera.stale import StaleMonitor
from analytics.numeric import episodes, save_tiers
from analytics.numeric.device_state import gather, pack, restore_devices
from analytics.numeric.monitor import NumericMonitor
from ingest.errors import read_until_answered
from ioc import camera_shards
from ioc.camera_watch import ShardWatch
from storage.writes import (
    FindingRow,
    load_series_states,
    load_state,
    load_states,
    save_series_states,
    save_state,
    save_states,
)

logger = logging.getLogger("ioc.analytics_stage")  # the stage's log, as before the split

STATE_NAME = "numeric_monitor"  # the whole monitor in one analytics_state row: read once from older deployments
SERIES_SCOPE = "numeric"  # series_state rows of the numeric monitor, one per device
STALE_STATE_NAME = "camera_stale"  # snapshot arrivals per camera (StaleMonitor)


class StageState:
    """Restore and persist the stage's learned state; the stage holds it (see its ``__init__``)."""

    pool: Any
    monitor: NumericMonitor
    metric_ranges: dict[str, tuple[float, float]] | None
    numeric: bool
    series_scope: str
    stale: StaleMonitor
    plan: save_tiers.SavePlan
    camera_state_max_age_s: float
    guard: Callable[[Any, list[FindingRow] | None], Awaitable[None]] | None
    _shards: list[ProcessPoolExecutor]
    watch: ShardWatch
    _lock: threading.Lock
    _save_lock: asyncio.Lock
    _received: bool

    def _shard_dead(self, shard: int) -> bool:
        raise NotImplementedError  # the stage's

    def _shard_job(self, shard: int, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run one of the stage's own jobs on a camera shard, known to the shard watch (never judged stuck)."""
        fut = asyncio.get_running_loop().run_in_executor(self._shards[shard], fn, *args)
        self.watch.submitted(shard, None, fut)
        return fut

    async def load(self) -> None:
        """Restore the learned state, if any: the numeric monitor's, device by device (a restart does not relearn
        a week) and each camera's reference scene (a camera re-pointed while the service was down is still
        reported). Call before feeding the stage.

        While the database cannot be read this waits and retries: a new leader or worker that learned afresh
        instead would overwrite weeks of learned state with its first saves (a takeover often comes with trouble
        in the database). Only a state this version cannot decode is given up (learned afresh)."""
        try:
            series, state, memory, stale, cameras = await read_until_answered(self.pool, self._read_saved,
                                                                              "saved detector state")
        except Exception as err:  # the database answers, the rows do not read: as undecodable state
            logger.warning("detector state not read (%s); learning from scratch", err)
            return
        try:
            if series:
                restored = await asyncio.to_thread(self._restore, series)
                logger.info("numeric detector state restored: %d of %d devices, %d series (%d bytes)", restored,
                            len(series), len(self.monitor.table), sum(len(x) for _, x in series))
            elif state:
                self.monitor = NumericMonitor.from_state(state, ranges=self.metric_ranges)
                logger.info("numeric detector state restored from the deployment's single row (%d bytes)", len(state))
            if memory:
                logger.info("%d group episodes ongoing", episodes.restore(self.monitor, memory))
            if stale:
                logger.info("snapshot arrivals restored for %d cameras", self.stale.restore(stale))
        except Exception as err:
            logger.warning("detector state not restored (%s); learning from scratch", err)
            return
        if not cameras or not self._shards:
            return
        per_shard = camera_shards.split_saved(cameras, len(self._shards))
        try:
            restored = sum(await asyncio.gather(*(self._shard_job(i, camera_shards.import_states, items)
                                                  for i, items in enumerate(per_shard))))
            logger.info("camera analysers restored: %d of %d saved", restored, len(cameras))
        except Exception as err:
            logger.warning("camera analysers not restored (%s); cameras learn their scenes afresh", err)

    async def _read_saved(self) -> tuple[list[tuple[str, bytes]], bytes | None, bytes | None, bytes | None,
                                         list[tuple[str, bytes]]]:
        """The saved rows, undecoded: (device series, an older whole-monitor blob, episode memory, camera arrivals,
        camera scenes)."""
        state: bytes | None = None
        memory: bytes | None = None
        series: list[tuple[str, bytes]] = []
        async with self.pool.acquire(timeout=5) as conn:
            if self.numeric:
                series = await load_series_states(conn, self.series_scope)
                if not series:  # saved whole before migration 0010: read once, saved per device from then on
                    state = await load_state(conn, STATE_NAME)
                memory = await load_state(conn, episodes.state_name(self.series_scope))
            stale = await load_state(conn, STALE_STATE_NAME)
            cameras = await load_states(conn, camera_shards.CAMERA_STATE_PREFIX, self.camera_state_max_age_s)
        return series, state, memory, stale, cameras

    def _restore(self, items: list[tuple[str, bytes]]) -> int:
        with self._lock:
            return restore_devices(self.monitor, items)

    def _take_dirty(self, now: float | None = None
                    ) -> tuple[list[tuple[str, bytes]], set[int], episodes.Pending | None]:
        """The saved form of the changed devices due at ``now`` (``self.plan``; None: all); those devices; the
        group episode memory if it changed."""
        with self._lock:
            mon = self.monitor
            names, dirty = save_tiers.take(mon, self.plan, now)
            memory = episodes.pending(mon)
            if not dirty:
                return [], dirty, memory
            try:
                copied = gather(mon, [names[d] for d in sorted(dirty)])  # a copy: the detectors go on meanwhile
            except Exception:
                save_tiers.untake(mon, dirty)
                raise
        try:
            return pack(copied), dirty, memory
        except Exception:
            with self._lock:
                save_tiers.untake(self.monitor, dirty)
            raise


    async def save(self, cameras: bool = True, now: float | None = None) -> None:
        """Persist the state of the devices that learned something since the last save (with ``now``, the loop's
        time of a periodic pass: only those due then, see save_tiers.py), the cameras' snapshot arrivals and
        (with ``cameras``) the scenes the camera analysers learned."""
        async with self._save_lock:
            await self._save(cameras, now)

    async def _save(self, cameras: bool, now: float | None) -> None:
        dirty: set[int] = set()
        try:
            states, dirty, memory = await asyncio.to_thread(self._take_dirty, now)
            # Nothing received: keep what is saved (a stage that could not load must not overwrite it with nothing).
            stale = self.stale.to_state() if self._received else None
            if states or stale is not None or memory is not None:
                async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                    if self.guard is not None:
                        await self.guard(conn, None)
                    await save_series_states(conn, self.series_scope, states)
                    if stale is not None:
                        await save_state(conn, STALE_STATE_NAME, stale)
                    if memory is not None:  # only this task writes it, in _save_lock's order: never an older one
                        await save_state(conn, episodes.state_name(self.series_scope), memory.data)
                if memory is not None:
                    episodes.done(memory)
        except Exception as err:  # saved with the next pass (or learned again by the next leader)
            with self._lock:
                save_tiers.untake(self.monitor, dirty)
            logger.warning("detector state not saved: %s", err)
        if cameras and self._shards:
            await self._save_cameras()

    async def _save_cameras(self) -> None:
        try:
            parts = await asyncio.gather(*(self._shard_job(i, camera_shards.export_states)
                                           for i in range(len(self._shards)) if not self._shard_dead(i)))
            rows = camera_shards.scene_rows(parts)
            if rows:
                async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                    if self.guard is not None:
                        await self.guard(conn, None)
                    await save_states(conn, rows)
        except Exception as err:  # the exported cameras are saved again on the next pass only if analysed again
            logger.warning("camera analysers not saved: %s", err)
