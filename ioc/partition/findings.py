"""Findings of the partition workers, on to the alert brain (a subject of the same JetStream stream).

The brain holding the lease reads ``<stream>.findings`` through one durable pull consumer (:class:`FindingsInput`),
so findings raised while the brain was failing over are delivered to its successor. A message is acknowledged
only once the alert step that applied its findings is stored (the alert stage's ``stored_seq``), as the brain's
MQTT input is (ioc/cluster/brain.py ``tie_acks``): a leader killed between the handover and that store leaves
the message unacknowledged, and JetStream delivers it again to the next leader after ``ack_wait``. While the
alert stage holds too many signals (``backlogged``), nothing more is fetched or handed over: the stage never
drops a finding at its bound, and the consumer's ``max_ack_pending`` bounds what waits here.

Both inputs feed one stage, whose acked position is one integer: :class:`JointPosition` numbers the pairs
(MQTT position, findings messages handed over) the stage steps at, and tells each input its own part.
A finding delivered twice (stored, then the leader died before the ack) is the same signal again: the engine
refreshes the alert of its key, it does not raise a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from analytics.findings import Finding

logger = logging.getLogger(__name__)

#: How often handed-over messages whose step is stored are acknowledged.
ACK_EVERY_S = 0.25
#: JetStream delivers an unacknowledged message again after this long (to the next leader, if this one died);
#: a live leader whose step waits (database away) keeps its messages with ``in_progress`` every third of it.
ACK_WAIT_S = 10.0
#: Messages handed over and not acknowledged yet, at most (the consumer's ``max_ack_pending`` too).
MAX_PENDING = 512
#: How long one fetch waits for messages (its pull request lives at the server that long).
FETCH_S = 1.0
#: Findings handed over at once: a huge message goes in parts, each only while the stage has room for it.
CHUNK = 10_000


def findings_subject(stream: str) -> str:
    return f"{stream}.findings"


def encode_findings(findings: list[Finding]) -> bytes:
    return orjson.dumps([[f.device_id, f.series, f.ts.timestamp(), f.type, float(f.score), f.explanation, f.detail]
                         for f in findings], option=orjson.OPT_SERIALIZE_NUMPY, default=str)


def decode_findings(data: bytes) -> list[Finding]:
    out = []
    for item in orjson.loads(data):
        try:
            device_id, series, ts, ftype, score, explanation, detail = item
            out.append(Finding(str(device_id), str(series), datetime.fromtimestamp(float(ts), UTC), str(ftype),
                               float(score), str(explanation), dict(detail or {})))
        except (TypeError, ValueError, OverflowError):
            logger.warning("a finding on the stream has an unexpected shape; skipped")
    return out


class Stage(Protocol):
    """What the findings input needs of the alert stage (:class:`ioc.alerts.stage.AlertStage`)."""

    position: Callable[[], int]
    stored_seq: int
    lost_after: int | None

    def backlogged(self) -> bool: ...

    def has_room(self) -> bool: ...


class JointPosition:
    """One position sequence for a stage fed by two inputs: ``first`` (the MQTT input's position) and ``second``
    (findings messages handed over whole). Both only grow.

    Each distinct pair the stage asks for gets the next even number; an odd number ``t`` (the stage's
    ``lost_after``, its position minus one: everything before the input being handed over) stands for the pair
    of ``t + 1`` with the first input one back. Findings messages are counted once handed over whole and never
    dropped (:class:`FindingsInput` waits for room), so their part needs no step back.
    """

    def __init__(self, first: Callable[[], int], second: Callable[[], int]) -> None:
        self.first, self.second = first, second
        self._tick = 0
        self._marks: dict[int, tuple[int, int]] = {0: (0, 0)}
        self._order: deque[int] = deque([0])
        self._settled = (0, 0)

    def position(self) -> int:
        pair = (self.first(), self.second())
        if self._marks[self._order[-1]] != pair:
            self._tick += 2
            self._marks[self._tick] = pair
            self._order.append(self._tick)
        return self._order[-1]

    def at(self, tick: int) -> tuple[int, int]:
        """The pair a position of the stage stands for (what is settled already, for one already forgotten)."""
        if tick % 2:
            mark = self._marks.get(tick + 1)
            if mark is not None:
                return mark[0] - 1, mark[1]
        mark = self._marks.get(tick)
        return mark if mark is not None else self._settled

    def settled(self, stored: int) -> tuple[int, int]:
        """Each input's settled position, given the stage's ``stored_seq``; marks before it are forgotten."""
        m, n = self.at(stored)
        self._settled = (max(self._settled[0], m), max(self._settled[1], n))
        while len(self._order) > 1 and self._order[0] < stored:
            del self._marks[self._order.popleft()]
        return self._settled


class FindingsInput:
    """The brain's durable pull consumer of ``<stream>.findings``; a message is acked once ``settled()`` (the
    number of messages handed over whose findings are stored) reaches it.

    ``deliver`` hands findings to the alert stage (and the live hub); ``hold``/``has_room``: fetch nothing more
    while the stage is full, again once it has room. A message JetStream delivers again while it is still
    pending here (``ack_wait`` ran out anyway) is not handed over twice.
    """

    def __init__(self, js: Any, stream: str, deliver: Callable[[list[Finding]], None],
                 ack_wait_s: float = ACK_WAIT_S, max_pending: int = MAX_PENDING) -> None:
        self.js, self.stream, self.deliver = js, stream, deliver
        self.ack_wait_s, self.max_pending = ack_wait_s, max_pending
        self.handed = 0  # messages whose findings were handed over whole
        self.acked = 0
        self.settled: Callable[[], int] = lambda: self.handed
        self.hold: Callable[[], bool] = lambda: False
        self.has_room: Callable[[], bool] = lambda: True
        self._pending: deque[tuple[int, Any]] = deque()  # (handed count with it, message) not acked yet
        self._by_seq: dict[int, int] = {}  # stream sequence -> index in the handed count, while pending
        self._msgs: dict[int, Any] = {}  # index -> the latest delivery of that message (acks go to it)
        self._in_hand: list[Any] = []  # fetched, not handed over yet (waiting for room)
        self._done: set[int] = set()  # stream sequences acked lately (``_acked_order``: the last MAX_PENDING)
        self._acked_order: deque[int] = deque()
        self.held = False

    @property
    def durable(self) -> str:
        return f"{self.stream}-brain-findings"

    async def _subscribe(self) -> Any:
        from nats.js.api import AckPolicy, ConsumerConfig

        subject = findings_subject(self.stream)
        config = ConsumerConfig(name=self.durable, durable_name=self.durable, filter_subject=subject,
                                ack_policy=AckPolicy.EXPLICIT, ack_wait=self.ack_wait_s,
                                max_ack_pending=self.max_pending)
        try:  # creates it, or brings a consumer of an older version to these limits
            await self.js.add_consumer(self.stream, config=config)
        except Exception as err:
            logger.warning("findings consumer %s not updated (%s); using it as it is", self.durable, err)
        return await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Fetch, hand over, ack what is stored, until ``stop`` (or cancelled: then what is stored is acked and
        the rest given back at once, for the next leader)."""
        sub = await self._subscribe()
        acker = asyncio.create_task(self._ack_loop())
        try:
            while stop is None or not stop.is_set():
                room = self.max_pending - len(self._pending)
                if room <= 0 or self._full():
                    await asyncio.sleep(0.05)
                    continue
                try:
                    msgs = await sub.fetch(min(64, room), timeout=FETCH_S)
                except TimeoutError:
                    continue
                self._in_hand = list(msgs)
                while self._in_hand:
                    await self._hand_over(self._in_hand[0])
                    self._in_hand.pop(0)
            await self._ack_settled()
        finally:
            acker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._give_back(sub), 5)

    def _full(self) -> bool:
        if self.held:
            self.held = not self.has_room() or self.hold()
        elif self.hold():
            self.held = True
            logger.warning("findings input: the alert stage is full; not fetching (%d messages pending)",
                           len(self._pending))
        return self.held

    async def _wait_room(self) -> None:
        """Until the stage has room (the ack loop keeps the fetched messages ours meanwhile)."""
        while self._full():
            await asyncio.sleep(0.05)

    async def _hand_over(self, m: Any) -> None:
        seq = self._seq(m)
        known = self._by_seq.get(seq)
        if known is not None:  # delivered again while pending here: the newest delivery takes the ack
            self._msgs[known] = m
            return
        if seq in self._done:  # delivered again as its ack went out: acked again, not handed over twice
            with contextlib.suppress(Exception):
                await m.ack()
            return
        try:
            findings = decode_findings(m.data)
        except Exception as err:  # not findings at all: acked with the others (nothing to store)
            logger.warning("a findings message could not be read (%s); skipped", err)
            findings = []
        for start in range(0, max(1, len(findings)), CHUNK):
            await self._wait_room()  # the stage takes every part whole: it never drops a finding at its bound
            with contextlib.suppress(Exception):  # one bad message must not stop the brain's input
                self.deliver(findings[start:start + CHUNK])
        self.handed += 1  # on the event loop right after the last part: the stage's next step covers it
        self._pending.append((self.handed, m))
        self._msgs[self.handed] = m
        if seq >= 0:
            self._by_seq[seq] = self.handed

    @staticmethod
    def _seq(m: Any) -> int:
        try:
            return int(m.metadata.sequence.stream)
        except Exception:  # no JetStream metadata (not expected): cannot tell a redelivery
            return -1

    async def _ack_loop(self) -> None:
        last_progress = time.monotonic()
        while True:
            await asyncio.sleep(ACK_EVERY_S)
            await self._ack_settled()
            if time.monotonic() - last_progress >= self.ack_wait_s / 3:
                last_progress = time.monotonic()
                # the step waits (database away), or the stage is full: what was fetched stays ours
                for m in [self._msgs[index] for index, _ in self._pending] + self._in_hand:
                    with contextlib.suppress(Exception):
                        await m.in_progress()

    async def _ack_settled(self) -> int:
        """Ack every message whose findings' step is stored; returns how many."""
        upto = self.settled()
        done = 0
        while self._pending and self._pending[0][0] <= upto:
            index, _ = self._pending.popleft()
            m = self._msgs.pop(index)
            seq = self._seq(m)
            if self._by_seq.pop(seq, None) is not None:
                self._done.add(seq)
                self._acked_order.append(seq)
                if len(self._acked_order) > self.max_pending:
                    self._done.discard(self._acked_order.popleft())
            await m.ack()
            done += 1
        self.acked += done
        return done

    async def _give_back(self, sub: Any) -> None:
        """Stopping: ack what is stored, hand the rest back to JetStream now (not after ``ack_wait``). Given back
        only once this input's last pull request has expired: the server would deliver them to it again."""
        await self._ack_settled()
        rest = [self._msgs.pop(index) for index, _ in self._pending] + self._in_hand
        self._pending.clear()
        self._in_hand = []
        self._by_seq.clear()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        for m in rest:  # sent with the connection's close at the latest (it flushes what is buffered)
            with contextlib.suppress(Exception):
                await m.nak(delay=FETCH_S + 0.5)


def tie_findings(findings: FindingsInput, alerts: Stage, brain_input: Any = None) -> FindingsInput:
    """Ack findings once the alert step covering them is stored, and read nothing while the stage is full.

    Call after ``tie_acks`` (the MQTT input's position and acks): the stage then steps at a joint position, and
    ``brain_input`` (``BrainInput``, if the leader reads MQTT) is told its own part of the stored and lost ones.
    """
    joint = JointPosition(alerts.position, lambda: findings.handed)
    alerts.position = joint.position
    findings.settled = lambda: joint.settled(alerts.stored_seq)[1]
    findings.hold, findings.has_room = alerts.backlogged, alerts.has_room
    if brain_input is not None:
        brain_input.settled = lambda: joint.settled(alerts.stored_seq)[0]

        def lost() -> int | None:
            after = alerts.lost_after
            return None if after is None else joint.at(after)[0]

        brain_input.lost = lost
    return findings


async def consume_findings(js: Any, stream: str, deliver: Callable[[list[Finding]], None],
                           stop: asyncio.Event) -> None:
    """Hand every finding on the stream to ``deliver`` until ``stop``, acked once handed over (for a reader
    with nothing to store first: tools and tests; the brain ties the acks to its alert stage)."""
    await FindingsInput(js, stream, deliver).run(stop)
