"""What a stuck process is doing: ``kill -USR1 <pid>`` prints every thread's stack and every asyncio task's to
stderr (the process goes on running). The same as ``py-spy dump``, without installing anything on the host."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import traceback
from types import FrameType


def dump_stacks(signum: int = 0, frame: FrameType | None = None) -> None:
    """Print the threads' stacks, then the running event loop's tasks (if this thread runs one)."""
    out = sys.stderr
    print(f"--- stacks (signal {signum}) ---", file=out, flush=True)
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, top in sys._current_frames().items():
        print(f"--- thread {names.get(ident, ident)} ---", file=out)
        traceback.print_stack(top, limit=30, file=out)
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:  # no loop running in this thread
        tasks = set()
    for task in sorted(tasks, key=lambda t: t.get_name()):
        print(f"--- task {task.get_name()} ---", file=out)
        task.print_stack(limit=20, file=out)
    print("--- end of stacks ---", file=out, flush=True)


def install_stack_dumps() -> None:
    """``SIGUSR1`` dumps the stacks (main thread only, where signal handlers may be set)."""
    if hasattr(signal, "SIGUSR1"):
        with contextlib.suppress(ValueError):  # not the main thread (embedded in a test runner's worker)
            signal.signal(signal.SIGUSR1, dump_stacks)
