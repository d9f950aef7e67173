"""Between the broker and the hub: a live replica's lag stays bounded when it is short of CPU.

Reading a message off the socket costs a few tens of microseconds; parsing it and turning it into frames
several times that. A replica that cannot do the second part at the input's rate used to fall behind the
broker by seconds: the backlog waited in the socket and at the broker, where nothing could coalesce it.
So the listener only reads and queues (:meth:`LiveIntake.push`), and each turn of the event loop handles
the queue for a bounded time (:meth:`LiveIntake.drain`):

* a message handled within ``shed_after_s`` of its arrival goes through as before;
* an older *telemetry* or *snapshot* message is not handled: it is kept as its topic's latest (a newer
  one on that topic replaces it) and handled only when the queue is empty, *as late*: the hub applies it
  and sends the device's latest state (a ``device`` frame, as to a screen that fell behind), not a
  reading seconds old;
* *status* and *event* messages are never shed (an outage must reach the wall however late).

A message's arrival is not simply when it was read: a message that waited in the socket while the process was
not running would count as fresh. :mod:`ioc.live.backlog` estimates when it really got here, from the device's
stamp against that device's learned clock offset and from the event loop's own stalls; the estimate only ever
makes a message older than its read, and only the device's own messages (ioc/live/backlog.py).

This is for screens only: the analytics and alerts read every reading from their own durable input
(the brain, docs/ha.md), and the ingest workers store every message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import paho.mqtt.client as mqtt
from prometheus_client import Counter

from ingest.metrics import HANDLER_ERRORS
from ioc.live.backlog import DeviceClocks, LoopStalls, device_stamp

logger = logging.getLogger(__name__)

SHED = Counter("ioc_live_shed", "Telemetry or snapshot messages a live replica set aside, late (newest per device "
               "shown once caught up)")

BACKLOG_AGED = Counter("ioc_live_backlog_aged", "Telemetry or snapshot messages a live replica read already older "
                       "than its shed limit: waited before being read (device stamp against its learned clock "
                       "offset, or a stall of the event loop)", ["by"])
_AGED_BY_STAMP, _AGED_BY_STALL = BACKLOG_AGED.labels("stamp"), BACKLOG_AGED.labels("stall")

#: Channels whose messages a newer one on the same topic makes redundant for a screen.
SHEDDABLE = (b"/telemetry", b"/snapshot")


class LiveIntake:
    """A queue of received messages, handled in slices of ``turn_budget_s`` per turn of the loop;
    ``handle(message, late)`` is told whether the message was set aside."""

    def __init__(self, handle: Callable[[mqtt.MQTTMessage, bool], None], shed_after_s: float = 0.15,
                 turn_budget_s: float = 0.01, max_queue: int = 200_000, max_set_aside: int = 50_000,
                 max_bytes: int = 256 * 1024 * 1024, max_devices: int = 100_000) -> None:
        self.handle = handle
        self.shed_after_s = shed_after_s
        self.turn_budget_s = turn_budget_s
        # Bounds against a flood (of distinct topics, or of large payloads): messages queued, topics set aside,
        # payload bytes held in both. Beyond them the oldest set-aside messages go first, then new messages.
        self.max_queue = max_queue
        self.max_set_aside = max_set_aside
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self.queue: deque[tuple[float, mqtt.MQTTMessage]] = deque()
        # Set-aside messages, the newest per topic, oldest topic first. An OrderedDict: taking the first entry of
        # a plain dict again and again scans the slots already emptied (quadratic over a long catch-up).
        self.latest_only: OrderedDict[bytes, mqtt.MQTTMessage] = OrderedDict()
        self.handled = 0
        self.shed = 0  # messages set aside for a newer one or for later (each counted once)
        self.superseded = 0  # ... of which a newer message on the topic replaced before it was handled
        self.overflow = 0  # messages dropped at a bound (never expected; counted to be seen)
        self.lag_s = 0.0  # age of the last message handled in order
        self.lag_max_s = 0.0
        # When a message really got here (ioc/live/backlog.py): per-device clocks, and the loop's stalls.
        self.clocks = DeviceClocks(max_devices=max_devices)
        self.stalls = LoopStalls()
        self.aged_by_stamp = 0  # sheddable messages read already older than shed_after_s, by their device's stamp
        self.aged_by_stall = 0  # ... by a stall of the event loop (and not by the stamp)
        self._scheduled = False

    def push(self, message: mqtt.MQTTMessage) -> None:
        """Queue one message (paho's reader calls this): cheap, never handles anything itself."""
        size = len(message.payload)
        while self.held_bytes + size > self.max_bytes and self.latest_only:
            self._drop_oldest_set_aside()
        if len(self.queue) >= self.max_queue or self.held_bytes + size > self.max_bytes:
            self.overflow += 1
            return
        self.held_bytes += size
        read = time.monotonic()
        arrived = self.stalls.arrival(read)
        topic = message._topic
        if topic.endswith(SHEDDABLE):  # status and event are never set aside: their age changes nothing
            stalled = read - arrived > self.shed_after_s
            if topic.endswith(b"/telemetry") and (stamp := device_stamp(message.payload)) is not None:
                by_stamp = self.clocks.earliest(topic[:topic.rfind(b"/")], stamp, read)
                if read - by_stamp > self.shed_after_s:
                    self.aged_by_stamp += 1
                    _AGED_BY_STAMP.inc()
                    stalled = False
                arrived = min(arrived, by_stamp)
            if stalled:
                self.aged_by_stall += 1
                _AGED_BY_STALL.inc()
        self.queue.append((arrived, message))
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.drain)
            except RuntimeError:  # no loop (tests driving it by hand)
                self._scheduled = False

    def drain(self) -> None:
        """Handle queued messages for at most ``turn_budget_s``; reschedule while any remain."""
        self._scheduled = False
        began = time.monotonic()
        deadline = began + self.turn_budget_s
        queue, latest_only = self.queue, self.latest_only
        now = began
        while queue:
            arrived, message = queue.popleft()
            topic = message._topic
            age = now - arrived
            if age > self.shed_after_s and topic.endswith(SHEDDABLE):
                if (old := latest_only.pop(topic, None)) is not None:
                    self.superseded += 1
                    self.held_bytes -= len(old.payload)
                elif len(latest_only) >= self.max_set_aside:
                    self._drop_oldest_set_aside()
                latest_only[topic] = message
                self.shed += 1
                SHED.inc()
                if self.shed % 1024 == 0:  # cheap (~1.5 us each), but a flood of them still ends the turn
                    now = time.monotonic()
                    if now >= deadline:
                        break
                continue
            self.held_bytes -= len(message.payload)
            if latest_only and (old := latest_only.pop(topic, None)) is not None:
                self.superseded += 1  # this newer message supersedes the one set aside
                self.held_bytes -= len(old.payload)
            self.lag_s = age
            self.lag_max_s = max(self.lag_max_s, age)
            self._handle(message, False)
            now = time.monotonic()
            if now >= deadline:
                break
        # Caught up: the messages set aside (each topic's newest) go out now, oldest topic first.
        while not queue and latest_only and now < deadline:
            message = latest_only.popitem(last=False)[1]
            self.held_bytes -= len(message.payload)
            self._handle(message, True)
            now = time.monotonic()
        if queue or latest_only:
            try:
                asyncio.get_running_loop().call_soon(self.drain)
                self._scheduled = True
            except RuntimeError:  # no loop (tests driving it by hand): the caller drains again
                pass

    async def watch(self) -> None:
        """Tick every ``stalls.tick_s`` so that a stall of the event loop is seen (run alongside the reader)."""
        try:
            while True:
                self.stalls.tick()
                await asyncio.sleep(self.stalls.tick_s)
        finally:
            self.stalls.stop()

    def _drop_oldest_set_aside(self) -> None:
        message = self.latest_only.popitem(last=False)[1]
        self.held_bytes -= len(message.payload)
        self.overflow += 1

    def _handle(self, message: mqtt.MQTTMessage, late: bool) -> None:
        self.handled += 1
        try:
            self.handle(message, late)
        except Exception:  # the handler catches its own errors; this keeps one message from stopping the queue
            HANDLER_ERRORS.labels("live_intake").inc()
            logger.exception("live intake: handling a message on %r raised", message._topic[:200])

    def stats(self) -> dict[str, float | int]:
        return {"intake_queue": len(self.queue), "intake_set_aside": len(self.latest_only),
                "intake_handled": self.handled, "intake_shed": self.shed, "intake_superseded": self.superseded,
                "intake_overflow": self.overflow, "intake_lag_ms": round(self.lag_s * 1000, 1),
                "intake_lag_max_ms": round(self.lag_max_s * 1000, 1),
                # read already older than the shed limit: by the device's stamp (its learned clock offset),
                # or by a stall of the event loop; the stalls seen and their total length
                "intake_backlog_aged": self.aged_by_stamp + self.aged_by_stall,
                "intake_aged_by_stamp": self.aged_by_stamp, "intake_aged_by_stall": self.aged_by_stall,
                "intake_stalls": self.stalls.stalls, "intake_stall_s": round(self.stalls.stall_s, 3),
                "intake_clock_devices": len(self.clocks.table), "intake_clock_evicted": self.clocks.evicted}
