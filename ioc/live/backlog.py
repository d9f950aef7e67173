"""How long a message waited before this process read it, without trusting device clocks.

The live intake (ioc/live/intake.py) ages messages from their arrival, but "arrival" is when the process *read*
them: a message that sat in the socket while the process was descheduled (a CPU hog, a pause, SIGSTOP) looks
fresh. Two estimates push that arrival back to when the message really got here, each only ever making a
message look *older* than its read time:

* :class:`DeviceClocks`, per device: the NTP-style minimum filter. ``read - stamp`` is the device's clock offset
  plus the transit (network, broker, socket); its smallest recent value is the offset plus the fastest transit,
  so ``stamp + that minimum`` is when the message would have been read had nothing queued it. The minimum is
  taken over a window of two buckets (``bucket_s`` each, the older one dropped when a new one opens, one step
  per sample however long the gap), so a device clock that steps back or drifts is followed within about two
  buckets, and a backlog read after a stall of any length is still measured against the minimum from before it.
* :class:`LoopStalls`, for the whole process: a periodic tick; when the event loop ran nothing for a while, the
  messages read right after are the socket's backlog. The k-th one is taken to have arrived k / rate after the
  stall began (``rate``: the input rate measured before it), until that catches up with the clock or a tick
  passes with nothing read. Device-independent: it covers messages without a stamp (camera snapshots), devices
  not seen before the stall, and devices the bounded table forgot.

What a device can do with its own stamps (future, jumping, garbage): only move its *own* entry, so only its own
messages look older (set aside and shown as its newest state once caught up, never dropped) or as fresh as their
read time. A stamp cannot make anything look fresher than its read, nor touch another device's entry; a message
without a parseable stamp is aged from its read (and the stall estimate). Many device ids can only evict entries
(LRU, ``max_devices``), after which those devices are aged as if unknown.
"""

from __future__ import annotations

import math
import re
import time
from collections import OrderedDict
from datetime import datetime

#: ``"ts": "<RFC 3339>"`` or ``"ts": <epoch ms>`` near the start of a JSON payload (the first item of a batch).
_TS = re.compile(rb'"ts"\s*:\s*(?:"([^"\\]{10,40})"|(-?\d{1,16}(?:\.\d{1,9})?)(?![\d.eE]))')
#: Where the stamp is looked for: devices put ``ts`` first or near it; a long payload is not scanned.
STAMP_WINDOW = 512


def device_stamp(payload: bytes | bytearray) -> float | None:
    """The device's ``ts`` as epoch seconds (its own clock, not trusted), or None: ~1-2 us."""
    at = payload.find(b'"ts"', 0, STAMP_WINDOW)
    if at < 0:
        return None
    match = _TS.match(payload, at)
    if match is None:
        return None
    text, number = match.groups()
    if number is not None:
        return float(number) / 1000.0
    try:
        ts = datetime.fromisoformat(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if ts.tzinfo is None:
        return None
    try:
        return ts.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


class DeviceClocks:
    """Per device: the windowed minimum of ``read - stamp`` (seconds, this process's monotonic clock against the
    device's). An entry is a 3-list [bucket opened at, previous bucket's minimum, current bucket's minimum];
    about 310 bytes per device with its key (measured: tests/unit/test_live_backlog.py), 31 MB at 100,000."""

    def __init__(self, max_devices: int = 100_000, bucket_s: float = 60.0) -> None:
        self.max_devices = max_devices
        self.bucket_s = bucket_s
        self.table: OrderedDict[bytes, list[float]] = OrderedDict()
        self.evicted = 0

    def earliest(self, device: bytes, stamp: float, read: float) -> float:
        """Learn from one message read at ``read`` (monotonic) and return when it would have been read had
        nothing held it up: ``stamp`` on this clock plus the device's fastest transit (never after ``read``)."""
        sample = read - stamp
        entry = self.table.get(device)
        if entry is None:
            if len(self.table) >= self.max_devices:
                self.table.popitem(last=False)
                self.evicted += 1
            self.table[device] = [read, sample, sample]
            return read
        self.table.move_to_end(device)
        if read - entry[0] >= self.bucket_s:  # one step, however long since: the older bucket keeps the past
            entry[0], entry[1], entry[2] = read, entry[2], sample
        elif sample < entry[2]:
            entry[2] = sample
        low = entry[1] if entry[1] < entry[2] else entry[2]
        return read - (sample - low)


class LoopStalls:
    """Backdates messages read just after the event loop was held up (see the module's docstring).

    :meth:`tick` runs every ``tick_s`` from :meth:`ioc.live.intake.LiveIntake.watch`; without it (nothing
    ticking) nothing is ever taken for a stall."""

    def __init__(self, tick_s: float = 0.02, stall_s: float = 0.05, min_rate: float = 50.0) -> None:
        self.tick_s = tick_s
        self.limit = tick_s + stall_s  # no tick for this long: the loop was held up
        self.min_rate = min_rate  # messages/s assumed at least (an idle feed still backdates its first ones)
        self.tick_at = math.inf
        self.rate = 0.0  # input rate (messages/s) between ticks, smoothed; frozen during a catch-up
        self.read_since_tick = 0
        self.settled = True  # the last tick was outside a catch-up: the next one may measure the rate
        self.began: float | None = None  # the stall being caught up on began here
        self.caught = 0  # messages read since the stall
        self.use_rate = min_rate
        self.stalls = 0
        self.stall_s = 0.0

    def arrival(self, read: float) -> float:
        """When a message read at ``read`` got here, as far as the loop's stalls tell (``read`` if not held)."""
        self.read_since_tick += 1
        if self.began is None:
            if read - self.tick_at <= self.limit:
                return read
            self._begin(read)  # read before the late tick ran: the stall is seen here first
        assert self.began is not None
        estimate = self.began + self.caught / self.use_rate
        self.caught += 1
        if estimate >= read:  # the backlog is read: what comes now is new
            self.began = None
            return read
        return estimate

    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        gap = now - self.tick_at
        if gap > self.limit:
            if self.began is None:
                self._begin(now)
        elif self.began is not None:
            if not self.read_since_tick:  # a whole tick with nothing read: the socket had no backlog left
                self.began = None
        elif self.settled and gap > 0:  # the input rate, over whole ticks outside a catch-up only
            self.rate += 0.1 * (self.read_since_tick / gap - self.rate)
        self.settled = self.began is None
        self.read_since_tick = 0
        self.tick_at = now

    def stop(self) -> None:
        self.tick_at = math.inf
        self.began = None

    def _begin(self, now: float) -> None:
        self.began = self.tick_at  # the last moment the loop is known to have run
        self.tick_at = now  # seen: the late tick that follows does not count it again
        self.settled = False
        self.caught = 0
        self.use_rate = max(self.rate, self.min_rate)
        self.stalls += 1
        self.stall_s += now - self.began
