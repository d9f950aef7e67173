"""``kill -USR1``: a stuck process prints its threads' and its asyncio tasks' stacks, and goes on."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from ioc.diagnostics import dump_stacks

pytestmark = pytest.mark.unit


async def test_the_dump_names_each_task_and_where_it_waits(capsys: pytest.CaptureFixture[str]) -> None:
    async def waiting_for_something_that_never_comes() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(waiting_for_something_that_never_comes(), name="stuck-stage")
    await asyncio.sleep(0)
    dump_stacks()
    task.cancel()
    err = capsys.readouterr().err
    assert "--- task stuck-stage ---" in err and "waiting_for_something_that_never_comes" in err
    assert "--- thread MainThread ---" in err and "test_the_dump_names_each_task" in err


def test_sigusr1_dumps_and_the_command_keeps_running() -> None:
    code = ("import sys, time; from ioc.diagnostics import install_stack_dumps; install_stack_dumps();"
            "print('ready', flush=True); time.sleep(3); print('still running', flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    os.kill(proc.pid, signal.SIGUSR1)
    time.sleep(0.2)
    out, err = proc.communicate(timeout=10)
    assert b"still running" in out and proc.returncode == 0
    assert b"--- stacks (signal 10) ---" in err and b"--- thread MainThread ---" in err and b"<string>" in err
