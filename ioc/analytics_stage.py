"""Run the detectors on what is ingested: numeric monitor in-process, camera analysers in worker processes.

Readings are buffered and handed to the vectorised numeric monitor once a second; snapshots go to a
camera shard chosen by camera id, so each camera's analyser (and its learned scene) lives in one
process. Findings are pushed on the live feed and stored. Nothing here ever blocks ingest: when the
camera shards are busy, snapshots are skipped (and counted), not queued without bound.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from prometheus_client import Counter

from analytics.camera.features import ImageTooLarge
from analytics.camera.stale import StaleMonitor
from analytics.findings import Finding
from analytics.numeric import save_tiers
from analytics.numeric.monitor import NumericMonitor
from ingest.metrics import HANDLER_ERRORS, RateLimitedLog
from ingest.records import ParsedMessage, Reading, Snapshot
from ioc import camera_shards
from ioc.analytics_isolation import Isolation, ingest_apart
from ioc.analytics_state import SERIES_SCOPE, STALE_STATE_NAME, STATE_NAME, StageState
from ioc.camera_watch import ShardWatch, kill_processes, stop_executor
from ioc.live.hub import LiveHub
from storage.writes import FindingRow, load_states, write_findings

logger = logging.getLogger(__name__)
errors = RateLimitedLog(logger)

FINDINGS = Counter("ioc_analytics_findings", "Findings raised", ["type"])
SNAPSHOTS_SKIPPED = Counter("ioc_analytics_snapshots_skipped", "Snapshots not analysed: camera shards busy")
SNAPSHOTS_REPEATED = Counter("ioc_analytics_snapshots_repeated", "Snapshots not analysed: a copy of a picture the "
                             "camera's analyser took lately, or no newer than its last one (a redelivery)")
SNAPSHOTS_REFUSED = Counter("ioc_analytics_snapshots_refused", "Snapshots not decoded: picture beyond the size caps")
SHARD_REBUILDS = Counter("ioc_analytics_shard_rebuilds", "Camera shard processes found dead and rebuilt")
SNAPSHOTS_STUCK = Counter("ioc_analytics_snapshots_stuck", "Snapshots analysed for longer than the bound, or at a "
                          "second death of their shard: their camera set apart (ioc/camera_watch.py)")
SNAPSHOTS_APART = Counter("ioc_analytics_snapshots_apart", "Snapshots not analysed: their camera's pictures stalled "
                          "or crashed a shard lately")
__all__ = ["SERIES_SCOPE", "STALE_STATE_NAME", "STATE_NAME", "AnalyticsStage"]  # the names moved keep their home

class AnalyticsStage(StageState):
    """The analytics sink of one process (beside the live hub); its state is loaded and saved by
    :class:`ioc.analytics_state.StageState`."""

    def __init__(self, hub: LiveHub, pool: Any, camera_processes: int = 2, max_inflight_per_shard: int = 32,
                 flush_s: float = 1.0, silence_every_s: float = 10.0, state_every_s: float = 15.0,
                 full_every_s: float = 300.0, camera_state_every_s: float = 1800.0,
                 camera_state_max_age_s: float = 7 * 86400.0,
                 metric_ranges: dict[str, tuple[float, float]] | None = None, numeric: bool = True) -> None:
        """``camera_processes=0`` analyses snapshots inline, in this thread (replays and benchmarks that
        drive the stage with :meth:`step` in simulated time; never for a live service). ``state_every_s``: how
        often the devices with a consequential change (save_tiers.py) and the cameras' snapshot arrivals are
        saved; ``full_every_s``: how often, at most, a device that changed otherwise is."""
        self.hub = hub
        self.pool = pool
        self.metric_ranges = metric_ranges  # declared ranges over the contract's (IOC_ANALYTICS__METRIC_RANGES)
        self.monitor = NumericMonitor(ranges=metric_ranges)
        self.stale = StaleMonitor()
        self._readings: list[tuple[str, str, datetime, float]] = []
        self._new_devices: list[tuple[str, str, str]] = []  # (device, kind, district) to register
        # A cancelled to_thread() keeps running: the lock stops a shutdown save() from overlapping it.
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._received = False  # anything reached on_parsed: the snapshot arrivals are worth saving
        self._last_snapshot: dict[str, tuple[datetime, int]] = {}  # camera -> (time, hash) of its newest picture
        self.series_scope = SERIES_SCOPE
        self.plan = save_tiers.SavePlan(full_every_s)
        self._saving: asyncio.Task[None] | None = None  # the periodic save, running beside the detectors
        self._save_lock = asyncio.Lock()  # saves commit in the order they took their devices
        # Silence is counted from no earlier than this: after a restart the downtime is ours, not the devices'.
        self.started = datetime.now(UTC)
        self._shards = [self._new_shard() for _ in range(camera_processes)]
        # A shard whose process died (OOM killer, a crash in native code) is replaced: the executor of a dead
        # process refuses every later submit. Generations tell a dead executor's late callbacks from the new one's.
        self._generation = [0] * camera_processes
        self._rebuilding: dict[int, asyncio.Task[None]] = {}
        self._last_rebuild = [float("-inf")] * camera_processes
        self._rebuild_delay = [0.0] * camera_processes
        self._inline: dict[str, Any] = {}  # camera analysers of the inline mode
        self.watch = ShardWatch(camera_processes)  # a shard stuck on one snapshot is stopped and rebuilt
        self.dropped_readings = 0  # readings a detector raised on (per device), not analysed
        self.isolation = Isolation()  # devices whose readings raised: run on their own for a while
        # False: the numeric detectors run on `ioc analytics-worker`s (ioc/partition); cameras stay here.
        self.numeric = numeric
        self._inflight = [0] * camera_processes
        self._max_inflight = max_inflight_per_shard
        self._pending_rows: list[FindingRow] = []
        self.flush_s, self.silence_every_s, self.state_every_s = flush_s, silence_every_s, state_every_s
        self.camera_state_every_s, self.camera_state_max_age_s = camera_state_every_s, camera_state_max_age_s
        # Downstream consumers (the alert stage): findings, and each analysed snapshot's health label.
        self.on_findings: Callable[[list[Finding]], None] | None = None
        self.on_health: Callable[[str, str, float, datetime], None] | None = None
        # High availability (ioc/cluster): awaited first inside every write transaction with the rows being
        # written (None for state saves): the lease's fence, and a NOTIFY of new findings to other replicas.
        self.guard: Callable[[Any, list[FindingRow] | None], Awaitable[None]] | None = None
        # Acks tied to the flush (ioc/cluster/brain.py): ``position`` is the sequence of the last input message
        # handed to on_parsed; ``handed`` the highest one whose findings went to ``on_findings`` (the detectors
        # ran past it and no snapshot of it is still being analysed).
        self.position: Callable[[], int] = lambda: 0
        # Whether the message handed to on_parsed was sent before (MQTT DUP: redelivered after a reconnection,
        # or to the next leader after a takeover); its snapshots may be copies of pictures analysed already.
        self.redelivered: Callable[[], bool] = lambda: False
        self.handed = 0
        # (input sequence, shard, generation) -> snapshots of that message being analysed in that shard
        self._analysing: dict[tuple[int, int, int], int] = {}

    def _shard_of(self, device_id: str) -> int:
        return camera_shards.shard_of(device_id, len(self._shards))

    @staticmethod
    def _new_shard() -> ProcessPoolExecutor:
        # spawn, not fork: a forked worker would inherit the API's listening socket and keep the port
        # after the server stops. A spawned process starts with this environment: the decoder's own size bounds.
        for name, value in camera_shards.DECODER_LIMITS.items():
            os.environ.setdefault(name, value)
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=camera_shards.shard_init)

    def _shard_dead(self, shard: int) -> bool:
        return shard in self._rebuilding or bool(getattr(self._shards[shard], "_broken", False))

    async def _detect_safely(self, devices: list[tuple[str, str, str]],
                             readings: list[tuple[str, str, datetime, float]]) -> list[Finding]:
        """The detectors over one flush; never raises. A device that raises is set apart (analytics_isolation)."""
        try:
            found, failed = await asyncio.to_thread(self._detect_apart, devices, readings)
        except Exception:  # registering the devices raised: nothing analysed this flush
            found, failed = [], {"(new devices)": len(readings)}
        for device_id, count in failed.items():
            HANDLER_ERRORS.labels("analytics").inc()
            self.dropped_readings += count
            errors.log("numeric detectors raised on %s: its %d readings were not analysed", device_id, count)
        return found

    def _detect_apart(self, devices: list[tuple[str, str, str]], readings: list[tuple[str, str, datetime, float]]
                      ) -> tuple[list[Finding], dict[str, int]]:
        with self._lock:
            for device_id, kind, district in devices:
                self.monitor.set_device(device_id, kind, district)
            return ingest_apart(self.monitor.ingest, readings, self.isolation)

    def health_problems(self) -> list[str]:
        """What keeps this stage from doing its work, for readiness (empty: healthy)."""
        return [f"camera shard {i} dead, rebuilding" if i in self._rebuilding else f"camera shard {i} dead"
                for i in range(len(self._shards)) if self._shard_dead(i)]

    def _start_rebuild(self, shard: int) -> None:
        """Replace a dead shard's executor (in a task on the running loop), once."""
        if shard not in self._rebuilding:
            logger.error("camera shard %d: its process died; rebuilding it", shard)
            again = self.watch.died(shard)
            if again is not None:
                SNAPSHOTS_STUCK.inc()
                logger.error("camera %s: its snapshot was being analysed at two deaths of shard %d; its snapshots "
                             "are not analysed for %.0f s", again, shard, self.watch.apart_s)
            self._rebuilding[shard] = asyncio.get_running_loop().create_task(self._rebuild(shard))

    async def _rebuild(self, shard: int) -> None:
        """New process for the shard, its cameras' saved scenes restored, then it takes snapshots again."""
        loop = asyncio.get_running_loop()
        try:
            # A shard that dies again and again (a picture that crashes the decoder) is rebuilt ever more slowly.
            recent = loop.time() - self._last_rebuild[shard] < 120.0
            self._rebuild_delay[shard] = min(60.0, max(1.0, 2 * self._rebuild_delay[shard])) if recent else 0.0
            await asyncio.sleep(self._rebuild_delay[shard])
            await asyncio.to_thread(stop_executor, self._shards[shard], 1.0)  # dead: nothing to wait for
            new = self._shards[shard] = self._new_shard()
            self._generation[shard] += 1
            self.watch.reset(shard)
            self._inflight[shard] = 0
            for key in [k for k in self._analysing if k[1] == shard]:  # died with the old process: no findings
                del self._analysing[key]
            items: list[tuple[str, bytes]] = []
            try:  # snapshots wait (skipped) until the saved scenes are back, so none is judged against nothing
                if self.pool is not None:
                    async with self.pool.acquire(timeout=5) as conn:
                        saved = await load_states(conn, camera_shards.CAMERA_STATE_PREFIX, self.camera_state_max_age_s)
                    items = camera_shards.split_saved(saved, len(self._shards))[shard]
                restored = await loop.run_in_executor(new, camera_shards.import_states, items)
                logger.info("camera shard %d rebuilt: %d of %d saved cameras restored", shard, restored, len(items))
            except Exception as err:  # a new process that dies at once is found dead and rebuilt again
                logger.warning("camera shard %d rebuilt; saved cameras not restored (%s)", shard, err)
            SHARD_REBUILDS.inc()
        except Exception:
            logger.exception("camera shard %d: rebuild failed; tried again on the next snapshot", shard)
        finally:
            self._last_rebuild[shard] = loop.time()
            self._rebuilding.pop(shard, None)

    # --- sink (event loop, must be cheap) ----------------------------------------------------------------

    def on_parsed(self, parsed: ParsedMessage) -> None:
        self._received = True
        for rec in parsed.records:
            if isinstance(rec, Reading) and self.numeric:
                if rec.device_id not in self._known:
                    self._known.add(rec.device_id)
                    dev = self.hub.table.devices.get(rec.device_id)
                    self._new_devices.append((rec.device_id, rec.kind, (dev.district if dev else None) or ""))
                for metric, value in rec.metrics.items():
                    self._readings.append((rec.device_id, metric, rec.ts, value))
            if isinstance(rec, Reading):
                if rec.kind == "camera":
                    self.stale.telemetry(rec.device_id, fps=rec.metrics.get("fps"),
                                         kbps=rec.metrics.get("bitrate_kbps"))
            elif isinstance(rec, Snapshot):
                # The input is at least once (the broker redelivers after a reconnection or a restart): a picture
                # analysed already would read as frozen at once (the same bytes as the last one), and the analyser
                # takes pictures in time order only. A snapshot is stamped when received, so a redelivered copy
                # comes with a newer time: the analyser knows its recent pictures (CameraAnalyser.replayed).
                last = self._last_snapshot.get(rec.device_id)
                digest = hash(rec.jpeg)
                if last is not None and (rec.ts < last[0] or (rec.ts == last[0] and digest == last[1])):
                    SNAPSHOTS_REPEATED.inc()
                    continue
                again = self.redelivered()  # the broker sent this message before: perhaps a copy analysed already
                if not again:  # a copy the broker sent before is no new arrival
                    self.stale.snapshot(rec.device_id, rec.ts)
                if not self._shards:
                    self._last_snapshot[rec.device_id] = (rec.ts, digest)
                    self._camera_result(rec.device_id, rec.ts, self._analyse_inline(rec, again))
                    continue
                if self.watch.apart(rec.device_id):  # its picture stalled a shard lately
                    SNAPSHOTS_APART.inc()
                    continue
                shard = self._shard_of(rec.device_id)
                if self._shard_dead(shard):  # skipped (counted) until its process is back
                    SNAPSHOTS_SKIPPED.inc()
                    self._start_rebuild(shard)
                    continue
                if self._inflight[shard] >= self._max_inflight:
                    SNAPSHOTS_SKIPPED.inc()
                    continue
                try:
                    fut = asyncio.get_running_loop().run_in_executor(self._shards[shard], camera_shards.analyse,
                                                                     rec.device_id, rec.jpeg, rec.ts, again)
                except BrokenProcessPool:
                    SNAPSHOTS_SKIPPED.inc()
                    self._start_rebuild(shard)
                    continue
                self._last_snapshot[rec.device_id] = (rec.ts, digest)  # analysed: a copy of it is not (skipped: it is)
                self._inflight[shard] += 1
                self.watch.submitted(shard, rec.device_id, fut)
                key = (self.position(), shard, self._generation[shard])
                self._analysing[key] = self._analysing.get(key, 0) + 1
                fut.add_done_callback(functools.partial(self._camera_done, rec.device_id, shard,
                                                        self._generation[shard], rec.ts, key[0]))

    def watch_shards(self) -> None:
        """Rebuild a shard that died (even idle) or has been busy with one snapshot too long (``self.watch``)."""
        for shard, device_id, busy in self.watch.stuck():
            if self._shard_dead(shard):
                continue
            SNAPSHOTS_STUCK.inc()
            self.watch.set_apart(device_id)
            logger.error("camera shard %d: a snapshot of %s analysed for %.0f s; the shard is stopped and rebuilt, "
                         "the camera's snapshots are not analysed for %.0f s", shard, device_id, busy,
                         self.watch.apart_s)
            kill_processes(self._shards[shard])
            self._start_rebuild(shard)
        for shard in range(len(self._shards)):
            if self._shard_dead(shard):
                self._start_rebuild(shard)

    def _analyse_inline(self, rec: Snapshot, redelivered: bool = False
                        ) -> tuple[str, float, float, int, list[Finding]] | None:
        from analytics.camera.analyser import CameraAnalyser

        analyser = self._inline.get(rec.device_id)
        if analyser is None:
            analyser = self._inline[rec.device_id] = CameraAnalyser(rec.device_id)
        elif analyser.replayed(rec.jpeg, redelivered):
            SNAPSHOTS_REPEATED.inc()
            return None
        try:
            res = analyser.analyse(rec.jpeg, rec.ts)
        except ImageTooLarge as err:
            self._refused(rec.device_id, err)
            return None
        except Exception:
            logger.exception("camera analysis of %s failed", rec.device_id)
            return None
        return res.label, float(res.confidence), float(res.activity), int(res.objects), list(res.findings)

    def _camera_done(self, device_id: str, shard: int, generation: int, ts: datetime, seq: int,
                     fut: asyncio.Future[Any]) -> None:
        key = (seq, shard, generation)
        left = self._analysing.pop(key, 1) - 1  # the findings are handed on below, in this same callback
        if left > 0:
            self._analysing[key] = left
        if generation == self._generation[shard]:  # else counted by a dead executor: reset at the rebuild
            self._inflight[shard] -= 1
        if fut.cancelled():  # the shard was shut down with it queued
            return
        try:
            result = fut.result()
        except BrokenProcessPool:
            if generation == self._generation[shard]:
                self._start_rebuild(shard)
            return
        except ImageTooLarge as err:
            self._refused(device_id, err)
            return
        except Exception:
            logger.exception("camera analysis of %s failed", device_id)
            return
        if result is None:  # a copy of a picture the shard analysed lately (camera_shards.analyse)
            SNAPSHOTS_REPEATED.inc()
            return
        self._camera_result(device_id, ts, result)

    @staticmethod
    def _refused(device_id: str, err: ImageTooLarge) -> None:
        SNAPSHOTS_REFUSED.inc()
        logger.warning("camera %s: snapshot not analysed: %s", device_id, err)

    def _camera_result(self, device_id: str, ts: datetime,
                       result: tuple[str, float, float, int, list[Finding]] | None) -> None:
        if result is None:
            return
        label, confidence, activity, objects, findings = result
        # Stamped with the snapshot's own time: the health verdict is about that picture.
        self.hub.set_health(device_id, {"label": label, "confidence": confidence, "activity": activity,
                                        "objects": objects, "ts": ts})
        if self.on_health is not None:
            self.on_health(device_id, label, confidence, ts)
        self._raise(findings)

    def _raise(self, findings: list[Finding]) -> None:
        if findings and self.on_findings is not None:
            self.on_findings(findings)
        for f in findings:
            FINDINGS.labels(f.type).inc()
            self.hub.emit_finding(f)
            self._pending_rows.append((f.ts, f.device_id, f.series, f.type, float(f.score), f.explanation,
                                       orjson.dumps(f.detail, option=orjson.OPT_SERIALIZE_NUMPY,
                                                    default=str).decode()))

    # --- periodic work ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Flush readings to the detectors every second; silence and stale checks; persist state."""
        loop = asyncio.get_running_loop()
        last_silence = last_state = last_cameras = loop.time()
        fed = datetime.now(UTC)  # when readings last came in
        try:
            while True:
                await asyncio.sleep(self.flush_s)
                taken = self.position()  # every message up to here is in the buffers taken now
                devices, readings = self._take()
                if readings:
                    fed = datetime.now(UTC)
                if readings or devices:
                    # Off the event loop: a big flush must not hold up the live feed's senders. Only this
                    # task touches the monitor, one call at a time, so the thread needs no lock.
                    self._raise(await self._detect_safely(devices, readings))
                self.watch_shards()
                self.handed = min(taken, min(self._analysing, default=(taken + 1,))[0] - 1)
                now = loop.time()
                if now - last_silence >= self.silence_every_s:
                    last_silence = now
                    wall = datetime.now(UTC)
                    # Silence is judged up to the last time anything came in: when our own input stalls
                    # (ingest backlog, broker link) every series would look silent, and none is.
                    judged = min(wall, fed + timedelta(seconds=5))
                    try:
                        silent = await asyncio.to_thread(self._silence, judged, self.started)
                        self._raise(silent + self.stale.check(judged, self.started))
                    except Exception:  # a silence check that raises is skipped, never the stage's end
                        HANDLER_ERRORS.labels("analytics").inc()
                        errors.log("silence check raised")
                await self._store()
                if now - last_state >= self.state_every_s:
                    last_state = now
                    cameras = now - last_cameras >= self.camera_state_every_s
                    last_cameras = now if cameras else last_cameras
                    if self._saving is None or self._saving.done():  # in the background: detection goes on
                        self._saving = asyncio.create_task(self.save(cameras=cameras, now=now), name="analytics-save")
        finally:
            for task in [*self._rebuilding.values(), *([self._saving] if self._saving else [])]:
                task.cancel()
            await asyncio.to_thread(self.close)

    def _take(self) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, datetime, float]]]:
        devices, self._new_devices = self._new_devices, []
        readings, self._readings = self._readings, []
        return devices, readings

    def step(self, now: datetime, silence: bool = False) -> None:
        """Synchronous form of one :meth:`run` cycle at ``now`` (replays in simulated time, no storage)."""
        devices, readings = self._take()
        if readings or devices:
            self._raise(self._detect(devices, readings))
        if silence:
            self._raise(self._silence(now) + self.stale.check(now))
        self._pending_rows.clear()

    def close(self) -> None:
        """Stop the camera worker processes (at most about 7 s each: see ``stop_executor``)."""
        for index, shard in enumerate(self._shards):
            if not stop_executor(shard):
                logger.error("camera shard %d did not stop", index)

    def _detect(self, devices: list[tuple[str, str, str]],
                readings: list[tuple[str, str, datetime, float]]) -> list[Finding]:
        with self._lock:
            for device_id, kind, district in devices:
                self.monitor.set_device(device_id, kind, district)
            return self.monitor.ingest(readings) if readings else []

    def _silence(self, now: datetime, since: datetime | None = None) -> list[Finding]:
        with self._lock:
            return self.monitor.check_silence(now, since)

    async def _store(self) -> None:
        rows, self._pending_rows = self._pending_rows, []
        if not rows:
            return
        try:
            async with self.pool.acquire(timeout=5) as conn, conn.transaction():
                if self.guard is not None:
                    await self.guard(conn, rows)
                await write_findings(conn, rows)
        except Exception as err:  # findings are also on the feed; keep them for the next try, bounded
            logger.warning("findings not stored yet (%s)", err)
            self._pending_rows = (rows + self._pending_rows)[-10_000:]
