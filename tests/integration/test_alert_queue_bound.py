"""The alert stage's queue of signals is bounded, and nothing acked is lost at its bound (real PostgreSQL).

The brain acks a message once the step covering its signals is stored. While the database is down (no ids can be
reserved: no step runs) or every step raises, the signals wait, and the broker keeps sending up to the Receive
Maximum unacked (20,000 by default): at many signals per message (a reading's findings) that passed the queue's
old bound of 200,000, whose overflow was dropped while the messages were acked later. Now reading stops at
``hold_signals`` (:meth:`AlertStage.backlogged`), and a signal dropped anyway (findings of messages read before
the pause, handed over in one burst) holds the acked position before its message until the broker sent it again.

The broker of the first two tests is a stand-in that keeps the session's semantics that matter (at most Receive
Maximum unacked in flight, nothing sent while the client does not read, every unacked message sent again on a
new connection); the last one runs the redelivery on a real (private) Mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from analytics.findings import Finding
from ingest.records import ParsedMessage
from ioc.alerts.config import AlertsConfig
from ioc.alerts.stage import HOLD_SIGNALS, MAX_SIGNALS, AlertStage
from ioc.cluster.brain import BrainInput, tie_acks
from ioc.cluster.config import ClusterConfig
from ioc.cluster.ids import IdReserve
from ioc.geo import City
from ioc.live.hub import LiveHub
from ioc.settings import Settings
from storage.config import StorageConfig
from storage.db import create_pool
from tests.conftest import own_database
from tests.support.mqtt import Publisher, unique_id
from tests.support.services import private_mosquitto
from tests.support.tasks import until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """This module's own database: its tests leave hundreds of open alerts that later tests' incidents would join
    (test_alerts_flow's district outage then found more than its six members)."""
    yield from own_database()


class FlakyPool:
    """The stage's pool; while ``down`` every connection is refused (the database is away)."""

    def __init__(self, pool: Any) -> None:
        self.pool, self.down = pool, False

    def acquire(self, timeout: float | None = None) -> Any:
        if self.down:
            raise OSError("connection refused: the database is down")
        return self.pool.acquire(timeout=timeout)


class Broker:
    """One persistent QoS 1 session: ``receive_maximum`` unacked in flight at most, none sent while the client
    does not read, every unacked one sent again (DUP) on the next connection."""

    def __init__(self, messages: list[tuple[str, bytes]], receive_maximum: int) -> None:
        self.waiting: deque[tuple[str, bytes, bool]] = deque((t, p, False) for t, p in messages)
        self.inflight: dict[int, tuple[str, bytes]] = {}
        self.receive_maximum = receive_maximum
        self.acked: list[str] = []  # topics, in ack order
        self.session: FakeSession | None = None
        self._mid = 0

    def connect(self, session: FakeSession) -> None:
        self.waiting.extendleft((t, p, True) for t, p in reversed(list(self.inflight.values())))
        self.inflight.clear()
        self.session = session

    def pump(self) -> int:
        """Send what the client reads now; returns how many were sent."""
        sent = 0
        while (self.waiting and self.session is not None and self.session.reading
               and len(self.inflight) < self.receive_maximum):
            topic, payload, dup = self.waiting.popleft()
            self._mid = self._mid % 65535 + 1
            self.inflight[self._mid] = (topic, payload)
            msg = mqtt.MQTTMessage(self._mid, topic.encode())
            msg.payload, msg.qos, msg.dup = payload, 1, dup
            self.session.on_message(msg, self.session.generation)
            sent += 1
        return sent

    def ack(self, session: FakeSession, mid: int) -> None:
        assert session is self.session
        self.acked.append(self.inflight.pop(mid)[0])


class FakeSession:
    """What BrainInput uses of MqttSession, on the stand-in broker."""

    generations = 0

    def __init__(self, broker: Broker, options: Any, on_message: Any) -> None:
        FakeSession.generations += 1
        self.broker, self.options, self.on_message = broker, options, on_message
        self.generation, self.reading, self.closed = FakeSession.generations, True, False
        self._stopped = asyncio.Event()
        broker.connect(self)

    def pause_reading(self, why: str = "back-pressure") -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def ack(self, mid: int, generation: int, qos: int = 1) -> bool:
        if self.closed or generation != self.generation:
            return False
        self.broker.ack(self, mid)
        return True

    async def stop(self) -> None:
        self.closed, self.reading = True, False
        self._stopped.set()

    async def run(self) -> None:
        await self._stopped.wait()


class Detectors:
    """The analytics stage as the alert stage sees it: each message's findings, handed over with the message
    (``at_once``) or at the next flush (all at once), ``handed`` the position they cover. ``shared``: the
    findings are about ten other devices, ten series each (a storm's dedupe keys), else about the message's own."""

    def __init__(self, stage: AlertStage, per_message: int, at_once: bool, shared: str | None) -> None:
        self.stage, self.per_message, self.at_once, self.shared = stage, per_message, at_once, shared
        self.position: Any = lambda: 0
        self.handed = 0
        self._pending: list[Finding] = []
        self._count = 0

    def on_parsed(self, parsed: ParsedMessage) -> None:
        for rec in parsed.records:
            self._count += 1
            dev = f"{self.shared}-{self._count % 10}" if self.shared else rec.device_id  # type: ignore[union-attr]
            series = 10 if self.shared else self.per_message
            self._pending += [Finding(dev, f"m{j % series}", rec.ts, "spike", 0.9, "unusual",  # type: ignore[union-attr]
                                      {"value": 1.0}) for j in range(self.per_message)]
        if self.at_once:
            self.flush()

    def flush(self) -> None:
        taken = self.position()
        findings, self._pending = self._pending, []
        if findings:
            self.stage.on_findings(findings)
        self.handed = taken


def alarms(tag: str, count: int) -> list[tuple[str, bytes]]:
    ts = datetime.now(UTC).isoformat()
    return [(f"ioc/v1/bts/BTS-{tag}-{i}/event",
             orjson.dumps({"ts": ts, "type": "mains_power_lost", "severity": "major", "detail": {}}))
            for i in range(count)]


class Rig:
    """An alert stage fed by the brain's input (``tie_acks``), ticked by hand: its ``run`` loop, minus the sleeps."""

    def __init__(self, pool: Any, messages: list[tuple[str, bytes]], findings_per_message: int,
                 at_once: bool, shared: str | None = None) -> None:
        city = City.load()
        self.pool = FlakyPool(pool)
        self.stage = AlertStage(LiveHub(city.district_of), self.pool, city, AlertsConfig())
        self.stage.ids = IdReserve()
        self.stage.engine.id_source = self.stage.ids
        settings = Settings(database_url="postgresql://unused/none")
        self.detectors = Detectors(self.stage, findings_per_message, at_once, shared)
        self.input = tie_acks(BrainInput(settings, (self.stage.on_parsed, self.detectors.on_parsed)),
                              self.detectors, self.stage)  # type: ignore[arg-type]
        self.broker = Broker(messages, self.input.max_unacked)
        self.input.session = FakeSession(self.broker, self.input.session.options, self.input._on_message)  # type: ignore[assignment]
        self.input._new_session = lambda options: FakeSession(  # type: ignore[method-assign]
            self.broker, options, self.input._on_message)
        self.peak = 0
        self.step_raises = False
        engine_tick = self.stage.engine.tick

        def tick(now: datetime) -> Any:
            if self.step_raises:
                raise ValueError("the engine cannot compare a stored silence")
            return engine_tick(now)

        self.stage.engine.tick = tick  # type: ignore[method-assign]

    async def tick(self) -> None:
        self.broker.pump()
        self.peak = max(self.peak, len(self.stage._signals))
        self.detectors.flush()
        self.peak = max(self.peak, len(self.stage._signals))
        if await self.stage._reserve_ids():
            async with self.stage._lock:
                self.stage._step_safely(datetime.now(UTC))
        await self.stage.flush()
        self.input.ack_settled()
        await self.input.flow()

    def done(self) -> bool:
        return not self.broker.waiting and not self.broker.inflight


async def stored_alerts(pool: Any, tag: str) -> dict[str, int]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT device_id, count(*) AS n FROM alerts WHERE device_id LIKE $1 "
                                "GROUP BY device_id", f"BTS-{tag}-%")
    return {r["device_id"]: r["n"] for r in rows}


@pytest.mark.parametrize(("outage", "scale"), [("database down", 1), ("steps raise", 10)])
async def test_reading_pauses_before_the_queue_bound_and_every_acked_alarm_is_stored(
        database_url: str, outage: str, scale: int) -> None:
    """At the real bounds: 2,000 alarms with 100 findings each (202,000 signals) reach the brain while nothing
    can be stored (no ids can be reserved: no step runs); the broker would send all of them (Receive Maximum
    20,000). Reading stops at HOLD_SIGNALS, nothing is dropped, and once the outage ends every alarm is stored
    before its ack. Every step raising (each tick applies the whole queue and undoes it): the same at a tenth
    of the bounds, for time. (Findings handed over with their message; handed over later, a burst can pass the
    bound: the next test.)"""
    pool = await create_pool(database_url, StorageConfig(), max_size=4)
    tag = uuid.uuid4().hex[:8]
    count = 2_000 // scale
    try:
        rig = Rig(pool, alarms(tag, count), findings_per_message=100, at_once=True, shared=f"FILL-{tag}")
        hold, most = rig.stage.hold_signals, rig.stage.max_signals = HOLD_SIGNALS // scale, MAX_SIGNALS // scale
        assert count * 101 > most and count < rig.input.max_unacked  # the old bound would overflow
        await rig.stage.load()
        if outage == "database down":
            rig.pool.down = True
        else:
            rig.step_raises = True
        for _ in range(3):  # ticks of an outage: nothing stored, nothing acked, the queue stays at the pause
            await rig.tick()
        assert not rig.input.session.reading and rig.input.held
        assert rig.broker.acked == [] and rig.stage.stored_seq == 0
        assert hold <= rig.peak < most and rig.stage.dropped == 0 and rig.stage.lost_after is None
        assert len(rig.broker.inflight) < count  # the rest waits at the broker
        rig.pool.down = rig.step_raises = False
        started = time.monotonic()
        while not rig.done():
            assert time.monotonic() - started < 60, "the backlog did not drain"
            await rig.tick()
        assert rig.stage.dropped == 0 and rig.peak < most
        assert len(rig.broker.acked) == count
        stored = await stored_alerts(pool, tag)
        assert {t.split("/")[3] for t in rig.broker.acked} == set(stored) and set(stored.values()) == {1}
    finally:
        await pool.close()


async def test_a_dropped_signal_is_never_acked_the_broker_sends_its_message_again(database_url: str) -> None:
    """The hard bound still drops (findings of messages read before the pause arrive in one burst), but the acked
    position stops before the message of the first dropped signal; once everything before it is stored the brain
    reconnects, the broker sends every unacked message again, and each is stored before its ack."""
    pool = await create_pool(database_url, StorageConfig(), max_size=4)
    tag = uuid.uuid4().hex[:8]
    count = 500
    try:
        rig = Rig(pool, alarms(tag, count), findings_per_message=4, at_once=False)
        rig.stage.hold_signals, rig.stage.max_signals = 200, 600  # the bounds scaled down, the same logic
        await rig.stage.load()
        rig.pool.down = True
        rig.broker.pump()  # 200 alarms read, then reading pauses: 800 findings pending at the detectors
        assert rig.input.held and rig.input.seq == 200
        await rig.tick()  # the detectors' flush hands them over at once: 1,000 > 600
        assert rig.stage.dropped > 0 and rig.stage.lost_after is not None
        lost = rig.stage.lost_after
        for _ in range(5):
            await rig.tick()
        assert rig.broker.acked == [] and rig.stage.stored_seq <= max(lost, 0)
        rig.pool.down = False
        started = time.monotonic()
        while not rig.done():
            assert time.monotonic() - started < 30, "the backlog did not drain"
            await rig.tick()
            assert rig.stage.stored_seq <= max(lost, 0) or rig.input.redeliveries > 0
        assert rig.input.redeliveries >= 1 and rig.stage.lost_after is None
        assert len(rig.broker.acked) == count
        stored = await stored_alerts(pool, tag)
        assert {t.split("/")[3] for t in rig.broker.acked} == set(stored) and set(stored.values()) == {5}
        assert rig.stage.health_problems() == []
    finally:
        await pool.close()


async def test_on_mosquitto_alarms_dropped_at_the_bound_come_again_and_are_stored_before_their_ack(
        database_url: str) -> None:
    """The stage and the brain's real session, run as a leader runs them, on a private broker: with the bound at
    5 signals and the step held, the 6th alarm is dropped and reading stops; once the step runs, the 5 before it
    are acked, the brain reconnects, Mosquitto sends the rest again, and all 20 are stored and acked: a new
    session with the same client id is handed nothing."""
    pool = await create_pool(database_url, StorageConfig(), max_size=4)
    city = City.load()
    tag = uuid.uuid4().hex[:8]
    count = 20
    tasks: list[asyncio.Task[None]] = []
    with private_mosquitto() as port:
        settings = Settings(database_url=database_url, mqtt_url=f"mqtt://127.0.0.1:{port}",
                            cluster=ClusterConfig(brain_client_id=unique_id("brain-bound"),
                                                  brain_session_expiry_s=120))
        pub = Publisher(port)
        stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig(tick_s=0.2))
        stage.ids = IdReserve()
        stage.engine.id_source = stage.ids
        stage.hold_signals, stage.max_signals = 1_000, 5  # no pause before the bound: it drops
        brain_input = tie_acks(BrainInput(settings, (stage.on_parsed,)), None, stage)
        try:
            async with stage._lock:  # the step waits: the signals pile up
                tasks = [asyncio.create_task(stage.run()), asyncio.create_task(brain_input.run())]
                await brain_input.session.wait_connected(30)
                for topic, payload in alarms(tag, count):
                    pub.publish(topic, payload)
                pub.wait_all()
                await until(lambda: stage.lost_after is not None, 30, "a signal dropped at the bound")
                await asyncio.sleep(0.5)
                assert brain_input.held and brain_input.seq == 6  # reading stopped at the drop
                assert stage.lost_after == 5 and stage.dropped == 1
            # ours: the stage also loads the open alerts other tests left in this database
            ours = lambda: sum(tag in str(a.device_id) for a in stage.engine.by_key.values())  # noqa: E731
            await until(lambda: ours() >= count and not brain_input._unacked, 60, "every alarm stored and acked")
            assert brain_input.redeliveries >= 1 and stage.lost_after is None
            deadline = time.monotonic() + 10
            while len(stored := await stored_alerts(pool, tag)) < count and time.monotonic() < deadline:
                await asyncio.sleep(0.1)  # acked means its step was stored; the check may read before the ack
            assert len(stored) == count
            await brain_input.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

            handed: list[str] = []  # a new session with the same client id: the broker holds nothing unacked
            later = BrainInput(settings, (lambda parsed: handed.extend(str(r.device_id) for r in parsed.records),))
            tasks = [asyncio.create_task(later.run())]
            await later.session.wait_connected(30)
            await asyncio.sleep(1.0)
            assert handed == []
            await later.stop()
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
            pub.close()
            await pool.close()
