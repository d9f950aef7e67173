"""Camera shards that stop answering: a snapshot analysed for too long stops its shard, and its camera is set apart.

A camera shard analyses its snapshots one at a time, in native code (libjpeg, OpenCV) that cannot be interrupted.
One picture that takes minutes (a JPEG of thousands of empty scans took 2 minutes for 460 KB, before
``MAX_JPEG_SCANS``; any other input class that makes a decoder spin the same way) held up every camera of its
shard, and in embedded mode every ack behind it, so ingest stopped reading. Whatever the cause, a snapshot that a
shard has been working on for longer than ``stuck_s`` ends the shard's process: the stage rebuilds it as it
rebuilds a dead one (its cameras' saved scenes restored), and that camera's snapshots are not analysed for
``apart_s`` (a camera sending such a picture every few seconds would otherwise stop its shard again and again).
A shard whose process dies (a crash in native code, the OOM killer) is rebuilt by the stage; a camera whose
snapshot was being analysed at two deaths of its shard within ``apart_s`` is set apart too (one death may be
anyone's: the OOM killer picks by size).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures.process import BrokenProcessPool
from typing import Any

#: A snapshot normally takes 10-100 ms; a shard's queue holds at most 32 (``max_inflight_per_shard``). Counted
#: from when the shard could start on it: the previous snapshot's end, or its own submission.
SNAPSHOT_STUCK_S = 30.0
#: How long a camera whose snapshot stalled its shard is left out of the analysis.
APART_S = 600.0


class ShardWatch:
    """Per shard, the snapshots submitted and not yet done (oldest first); the cameras set apart."""

    def __init__(self, shards: int, stuck_s: float = SNAPSHOT_STUCK_S, apart_s: float = APART_S) -> None:
        self.stuck_s, self.apart_s = stuck_s, apart_s
        self._queued: list[deque[tuple[float, str | None, asyncio.Future[Any]]]] = [deque() for _ in range(shards)]
        self._free_at = [0.0] * shards  # when the shard last finished a snapshot
        self._apart: dict[str, float] = {}  # camera -> until when (monotonic) its snapshots are skipped
        self._died_on: dict[str, float] = {}  # camera -> when its snapshot was being analysed as its shard died

    def submitted(self, shard: int, device_id: str | None, fut: asyncio.Future[Any], now: float | None = None) -> None:
        """A snapshot of ``device_id`` was handed to ``shard``; ``None``: one of the stage's own jobs (saving or
        restoring scenes: as long as the cameras are many, never judged; what waits behind it is judged from its end).
        """
        self._queued[shard].append((time.monotonic() if now is None else now, device_id, fut))
        fut.add_done_callback(lambda _: self.finished(shard))

    def finished(self, shard: int, now: float | None = None) -> None:
        """A snapshot of ``shard`` is done (a result, an error): the next one starts now."""
        self._free_at[shard] = time.monotonic() if now is None else now

    def reset(self, shard: int) -> None:
        """The shard's process was replaced: what it held is gone."""
        self._queued[shard].clear()

    def stuck(self, now: float | None = None) -> list[tuple[int, str, float]]:
        """(shard, camera, seconds) of each shard working on one snapshot for longer than ``stuck_s``."""
        now = time.monotonic() if now is None else now
        out = []
        for shard, queue in enumerate(self._queued):
            while queue and queue[0][2].done():
                queue.popleft()
            if queue and queue[0][1] is not None:
                busy = now - max(queue[0][0], self._free_at[shard])
                if busy > self.stuck_s:
                    out.append((shard, str(queue[0][1]), busy))
        return out

    def died(self, shard: int, now: float | None = None) -> str | None:
        """``shard``'s process died: the camera whose snapshot it was analysing, if that is the second time within
        ``apart_s`` (then set apart), else None."""
        now = time.monotonic() if now is None else now
        for _, device_id, fut in self._queued[shard]:
            if device_id is None or (
                fut.done() and (fut.cancelled() or not isinstance(fut.exception(), BrokenProcessPool))
            ):
                continue  # the stage's own job, or a snapshot done before the death
            if self.apart(device_id, now):
                return None  # set apart already (stopped by the watch for being stuck)
            before = self._died_on.get(device_id)
            self._died_on[device_id] = now
            if len(self._died_on) > 10_000:  # bounded: the oldest go first
                del self._died_on[next(iter(self._died_on))]
            if before is not None and now - before < self.apart_s:
                self.set_apart(device_id, now)
                return device_id
            return None
        return None

    def set_apart(self, device_id: str, now: float | None = None) -> None:
        """Leave ``device_id``'s snapshots out for ``apart_s``."""
        self._apart[device_id] = (time.monotonic() if now is None else now) + self.apart_s

    def apart(self, device_id: str, now: float | None = None) -> bool:
        """Whether ``device_id``'s snapshots are left out now."""
        until = self._apart.get(device_id)
        if until is None:
            return False
        if (time.monotonic() if now is None else now) < until:
            return True
        del self._apart[device_id]
        return False


def kill_processes(executor: Any) -> int:
    """SIGKILL the worker processes of a ``ProcessPoolExecutor`` (it then reports itself broken); how many."""
    procs = list((getattr(executor, "_processes", None) or {}).values())
    for proc in procs:
        proc.kill()
    return len(procs)


def stop_executor(executor: Any, wait_s: float = 5.0) -> bool:
    """Shut a ``ProcessPoolExecutor`` down within about ``wait_s`` (+ 2 s), whatever state its workers are in;
    whether its manager thread ended.

    Its workers get ``wait_s`` to finish and exit; then they are killed. A worker that died while a snapshot was
    being written to it leaves the call queue's feeder thread blocked on a full pipe that nobody reads, and the
    executor's manager thread waits for that thread forever: ``shutdown(wait=True)`` never returned, nor did the
    interpreter's exit (CPython gh-94777, fixed in 3.11.5; Debian 12 ships 3.11.2). As that fix does, closing this
    process's read end of the pipe makes the blocked write fail, and the thread ends.
    """
    manager = getattr(executor, "_executor_manager_thread", None)
    call_queue = getattr(executor, "_call_queue", None)
    procs = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    if manager is None:
        return True
    manager.join(wait_s)
    if manager.is_alive():
        for proc in procs:
            proc.kill()
        reader = getattr(call_queue, "_reader", None)
        if reader is not None:
            with contextlib.suppress(OSError):
                reader.close()
        manager.join(2.0)
    return not manager.is_alive()
