"""A camera shard whose process dies while a snapshot is being written to it still stops (real processes).

CPython before 3.11.5 (Debian 12 ships 3.11.2) never returns from ``ProcessPoolExecutor.shutdown`` then
(gh-94777): the queue's feeder thread waits on a full pipe nobody reads. The demo hung at Ctrl-C that way in a
fresh-clone CI run (its shards were hit by the Ctrl-C while starting), and a shard rebuilt after such a death
would never have come back.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from ioc.analytics_stage import AnalyticsStage
from ioc.live.hub import LiveHub

pytestmark = pytest.mark.integration


def _size(blob: bytes) -> int:
    return len(blob)


def test_the_stage_stops_a_shard_killed_while_a_snapshot_is_written_to_it() -> None:
    stage = AnalyticsStage(LiveHub(), None, camera_processes=1)
    shard = stage._shards[0]
    pid = shard.submit(os.getpid).result(timeout=60)
    os.kill(pid, signal.SIGSTOP)  # it reads nothing more: the next snapshots fill the pipe
    pending = [shard.submit(_size, bytes(4 << 20)) for _ in range(3)]
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)  # dies with a snapshot half written to it
    closing = threading.Thread(target=stage.close, daemon=True)  # daemon: a hang fails the test, not the run
    began = time.monotonic()
    closing.start()
    closing.join(20)
    assert not closing.is_alive(), "AnalyticsStage.close() hangs on a shard that died mid-write"
    assert time.monotonic() - began < 20
    assert all(f.done() for f in pending)
