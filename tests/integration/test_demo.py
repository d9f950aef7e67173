"""`ioc demo` from the command line: live frames within 30 s, clean stop on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets

from tests.support.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # timing bounds: alone under xdist (tests/conftest.py)


async def test_demo_serves_live_frames_within_30s_and_stops_cleanly(tmp_path: Path, artifacts: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOC_")}  # the demo finds services itself
    log = (artifacts / "demo.log").open("wb")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "ioc.cli", "demo", "--port", str(port), "--data-dir",
                             str(tmp_path)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    readings: list[dict[str, object]] = []
    try:
        while time.monotonic() - started < 30 and not readings:
            assert proc.poll() is None, (artifacts / "demo.log").read_text()[-3000:]
            # The demo prints the wall's link with a viewer token; the feed refuses anyone without one.
            link = re.search(r"wall display: +http://\S+/\?token=(\S+)", (artifacts / "demo.log").read_text())
            if link is None:
                await asyncio.sleep(0.2)
                continue
            try:
                async with websockets.connect(f"ws://127.0.0.1:{port}/ws/live?token={link[1]}", open_timeout=2,
                                              max_size=None) as ws:
                    deadline = started + 30
                    while time.monotonic() < deadline and not readings:
                        frames = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
                        readings += [f for f in frames if f["type"] == "reading"]
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed, TimeoutError):
                await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        assert readings, f"no live reading within 30 s: {(artifacts / 'demo.log').read_text()[-3000:]}"
        assert elapsed <= 30
        assert {"device_id", "kind", "ts", "metrics"} <= set(readings[0])
        printed = (artifacts / "demo.log").read_text()
        assert re.search(r"log in as admin, password \S{12,}", printed), printed[-2000:]
    finally:
        code = _stop_like_ctrl_c(proc, artifacts / "demo.log")
        log.close()
    assert code == 0, (artifacts / "demo.log").read_text()[-3000:]


def _stop_like_ctrl_c(proc: subprocess.Popen[bytes], log: Path) -> int | None:
    """SIGINT to the demo's process group (what Ctrl-C in a terminal does: the simulator and the history
    writer get it too). If it has not stopped in 30 s, its stacks go to the log (``kill -USR1``) and the whole
    group is killed, so that nothing it started goes on publishing into later tests; None then."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        time.sleep(2)
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is left (children outliving it)
            os.killpg(proc.pid, signal.SIGKILL)
