"""Screens of the live hub: frames, a client's bounded outbox, and the audiences that share work.

Per-screen, per-frame Python work is what limits how many screens one process holds: at 2,000 frames/s,
200 screens are 400,000 filter checks, queue appends and string joins a second. So screens with the same
subscription form one :class:`Audience`: each frame is filtered once per audience, and each batch of frames
(what one turn of the event loop emitted) is joined into one WebSocket message once, then handed to every
screen of the audience as a single queue entry. A screen's own cost is O(1) per batch, until it lags.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ioc.live.filters import Subscription


@dataclass(slots=True)
class Frame:
    """One encoded update plus what filters need to know about it."""

    seq: int
    type: str
    device_id: str
    kind: str
    district: str | None
    lat: float | None
    lon: float | None
    text: str
    coalescable: bool  # may be replaced by the device's latest state when a client lags

    def visible_to(self, sub: Subscription) -> bool:
        return sub.matches(self.kind, self.device_id, self.district, self.lat, self.lon, self.type)


@dataclass(slots=True)
class Batch:
    """Frames of one event-loop turn for one audience, joined once: ``text`` is a JSON array."""

    frames: list[Frame]
    text: str
    made_at: float = 0.0  # monotonic clock when the audience's batch was flushed


Item = Frame | Batch | str  # str: a control frame (snapshot, heartbeat, notice, action result)
#: About the most frames one WebSocket message carries (common clients refuse messages over 1 MiB).
MAX_MESSAGE_BYTES = 256 * 1024
#: Control frames (answers, notices, snapshots) a screen may have waiting before the server stops reading its
#: messages: a screen that sends faster than it reads its answers is held back by its own socket (TCP
#: back-pressure), instead of queueing answers without bound in the server's memory.
MAX_CONTROL_BYTES = 256 * 1024
#: A send waiting longer than this when the client falls behind: the screen (or its link) is not reading.
SOCKET_WAIT_S = 0.1
#: Upper edges (s) of the lag counts of ``GET /api/live/stats``: publish -> this replica's input, and a
#: batch's flush -> its send to a screen completed.
LAG_EDGES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(eq=False)
class ClientSession:
    """One connected client: its filter and its bounded outbox (counted in frames)."""

    sub: Subscription
    capacity: int
    queue: deque[Item] = field(default_factory=deque)
    queued: int = 0  # data frames in ``queue``
    behind: dict[str, None] = field(default_factory=dict)  # devices to resend as latest state
    behind_other: deque[str] = field(default_factory=deque)  # events etc. kept while lagging (bounded)
    dropped: int = 0
    lagging: bool = False
    lag_count: int = 0  # times this client fell behind (``GET /api/live/stats``)
    lag_on_socket: int = 0  # ... of which while a send was waiting for the screen's socket
    send_started: float = 0.0  # monotonic clock when the send in progress began (0: none)
    taken_at: float = 0.0  # when the oldest batch of the messages being sent was flushed (0: none)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    control_bytes: int = 0  # characters of the control frames in ``queue``

    @property
    def control_full(self) -> bool:
        """Its answers are waiting unread: read no more of its messages, send it no more heartbeats."""
        return self.control_bytes > MAX_CONTROL_BYTES

    def clear_queue(self) -> None:
        """Everything queued is dropped (a new subscription) or taken (a lagging screen's catch-up)."""
        self.queue.clear()
        self.queued = 0
        self.control_bytes = 0

    def push(self, frame: Frame) -> None:
        """One frame for this client alone (catch-up after a resume)."""
        self._push_item(frame, 1)

    def push_batch(self, batch: Batch) -> None:
        """A batch shared with the client's audience: O(1) unless the client lags."""
        self._push_item(batch, len(batch.frames))

    def _push_item(self, item: Frame | Batch, count: int) -> None:
        if self.lagging:
            self._remember_item(item)
        elif self.queued + count > self.capacity:
            # Fell behind: from now on keep only "which devices changed" until the client catches up.
            self.lagging = True
            self.lag_count += 1
            if self.send_started and time.monotonic() - self.send_started > SOCKET_WAIT_S:
                self.lag_on_socket += 1
            queued = list(self.queue)
            self.queue = deque(q for q in queued if isinstance(q, str))  # control_bytes unchanged
            self.queued = 0
            for old in queued:
                if not isinstance(old, str):
                    self._remember_item(old)
            self._remember_item(item)
        else:
            self.queue.append(item)
            self.queued += count
        self.wake.set()

    def push_control(self, text: str) -> None:
        """Heartbeats and notices: always delivered, never counted against the bound."""
        self.queue.append(text)
        self.control_bytes += len(text)
        self.wake.set()

    def _remember_item(self, item: Frame | Batch) -> None:
        for frame in item.frames if isinstance(item, Batch) else (item,):
            self.dropped += 1
            if frame.coalescable:
                self.behind.pop(frame.device_id, None)
                self.behind[frame.device_id] = None
            else:
                if len(self.behind_other) >= self.capacity:
                    self.behind_other.popleft()
                self.behind_other.append(frame.text)

    def take_messages(self, catch_up: Callable[[ClientSession], list[str]],
                      max_bytes: int = MAX_MESSAGE_BYTES) -> list[str]:
        """WebSocket messages to send now (each a JSON array), about ``max_bytes`` of frames at most.

        Shared batches go out as they are (joined once for the whole audience); loose frames and control
        frames are joined here. The cap keeps each message well under clients' size limits (1 MiB by
        default in common libraries) however far behind the sender is.
        """
        self.wake.clear()
        if self.lagging:
            return _join_in_messages(catch_up(self), max_bytes)
        out: list[str] = []
        loose: list[str] = []
        size = 0
        while self.queue and size < max_bytes:
            item = self.queue.popleft()
            if isinstance(item, Batch):
                if not self.taken_at:
                    self.taken_at = item.made_at
                if loose:
                    out.extend(_join_in_messages(loose, max_bytes))
                    loose = []
                out.append(item.text)
                self.queued -= len(item.frames)
                size += len(item.text)
            else:
                if isinstance(item, str):
                    text = item
                    self.control_bytes -= len(item)
                else:
                    text = item.text
                    self.queued -= 1
                loose.append(text)
                size += len(text)
        if loose:
            out.extend(_join_in_messages(loose, max_bytes))
        if self.queue:
            self.wake.set()
        return out

    def take_frames(self, catch_up: Callable[[ClientSession], list[str]]) -> list[str]:
        """The same as :meth:`take_messages`, frame by frame (tests and tools read frames one at a time)."""
        self.wake.clear()
        if self.lagging:
            return catch_up(self)
        out: list[str] = []
        while self.queue:
            item = self.queue.popleft()
            if isinstance(item, Batch):
                out.extend(f.text for f in item.frames)
            else:
                out.append(item if isinstance(item, str) else item.text)
        self.queued = self.control_bytes = 0
        return out


def _join(texts: list[str]) -> str:
    return "[" + ",".join(texts) + "]"


def _join_in_messages(texts: list[str], max_bytes: int) -> list[str]:
    """``texts`` as JSON-array messages of about ``max_bytes`` at most each (a snapshot may be larger alone)."""
    out: list[str] = []
    part: list[str] = []
    size = 0
    for text in texts:
        if part and size + len(text) > max_bytes:
            out.append(_join(part))
            part, size = [], 0
        part.append(text)
        size += len(text) + 1
    if part:
        out.append(_join(part))
    return out


@dataclass(eq=False)
class Audience:
    """The screens that share one subscription, and the frames waiting to be batched for them."""

    sub: Subscription
    clients: set[ClientSession] = field(default_factory=set)
    pending: list[Frame] = field(default_factory=list)

    def flush(self, max_bytes: int = MAX_MESSAGE_BYTES) -> int:
        """Hand the pending frames to every screen, joined once, in messages of about ``max_bytes`` at most
        (well under clients' 1 MiB default limit, however many frames one turn emitted); returns frames
        delivered."""
        if not self.pending:
            return 0
        frames, self.pending = self.pending, []
        start, size = 0, 0
        now = time.monotonic()
        for i, frame in enumerate(frames):
            size += len(frame.text) + 1
            if size >= max_bytes or i == len(frames) - 1:
                part = frames[start:i + 1]
                batch = Batch(part, _join([f.text for f in part]), now)
                for client in self.clients:
                    client.push_batch(batch)
                start, size = i + 1, 0
        return len(frames) * len(self.clients)
