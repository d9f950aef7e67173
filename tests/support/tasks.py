"""Small asyncio helpers the tests share."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Cancel every task, then wait for each to finish (as a process killed or stopped leaves its loops)."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(check: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll ``check()`` every ``every`` s until it is true; an AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(every)
