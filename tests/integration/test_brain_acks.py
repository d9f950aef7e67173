"""The brain acknowledges a message only once its effect is stored (real Mosquitto and PostgreSQL).

The brain's persistent QoS 1 session and the alert stage, in this process, wired as a leader wires them
(``tie_acks``). While the alert stage's flush fails, the alarm is applied in memory but never acked, however
long it waits; the session then ends without its flush (as a killed leader's), and the next session with
the same client id gets the alarm again from the broker, stores it and acks it; a third one gets nothing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from ingest.records import ParsedMessage
from ioc.alerts.config import AlertsConfig
from ioc.alerts.stage import AlertStage
from ioc.cluster.brain import BrainInput, tie_acks
from ioc.cluster.config import ClusterConfig
from ioc.cluster.ids import IdReserve
from ioc.geo import City
from ioc.live.hub import LiveHub
from ioc.settings import Settings
from storage.config import StorageConfig
from storage.db import create_pool
from tests.support.mqtt import Publisher, iso, unique_id
from tests.support.tasks import cancel_and_wait, until

pytestmark = pytest.mark.integration


class Leader:
    """An alert stage and the brain's session, as one leader runs them; ``seqs``: our alarm's sequence numbers."""

    def __init__(self, settings: Settings, pool: Any, city: City, device: str, store: bool) -> None:
        self.stage = AlertStage(LiveHub(city.district_of), pool, city, AlertsConfig())
        # ids from the database's sequences, as the brain draws them: ids of the engine's own numbering would be
        # ahead of the sequences, and a later brain on this database would draw them again (and overwrite our rows)
        self.stage.ids = IdReserve()
        self.stage.engine.id_source = self.stage.ids
        self.gate = asyncio.Event()  # the flush transaction waits for it (a slow store)
        self.gate.set()

        async def guard(conn: Any, changes: Any) -> None:
            await self.gate.wait()
            if not store:
                raise OSError("the database is away")  # transient: the stage keeps the changes and retries

        self.stage.guard = guard
        self.seqs: list[int] = []
        self.input = tie_acks(BrainInput(settings, (self.stage.on_parsed, self._mine)), None, self.stage)
        self.device = device
        self.tasks: list[asyncio.Task[None]] = []

    def _mine(self, parsed: ParsedMessage) -> None:
        if any(getattr(r, "device_id", None) == self.device for r in parsed.records):
            self.seqs.append(self.input.seq)

    async def start(self) -> None:
        self.tasks = [asyncio.create_task(self.stage.run()), asyncio.create_task(self.input.run())]
        await self.input.session.wait_connected(30)

    def acked(self) -> bool:
        return bool(self.seqs) and all(seq not in {u[0] for u in self.input._unacked} for seq in self.seqs)

    async def kill(self) -> None:
        """Stop without another flush or ack (what a SIGKILL leaves: the broker keeps what was not acked)."""
        await cancel_and_wait(self.tasks)
        await self.input.stop()


async def test_a_message_is_acked_only_after_its_effect_is_stored(database_url: str, mqtt_port: int) -> None:
    settings = Settings(database_url=database_url, mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}",
                        cluster=ClusterConfig(brain_client_id=unique_id("brain-acks"), brain_session_expiry_s=120))
    pool = await create_pool(database_url, StorageConfig(), max_size=4)
    city = City.load()
    device = unique_id("bts")
    pub = Publisher(mqtt_port)
    leaders: list[Leader] = []

    async def stored() -> int:
        async with pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM alerts WHERE device_id = $1", device))

    try:
        # 1. the store fails: the alarm is applied in memory, never acked
        first = Leader(settings, pool, city, device, store=False)
        leaders.append(first)
        await first.start()
        pub.publish(f"ioc/v1/bts/{device}/event", {"ts": iso(time.time()), "type": "mains_power_lost",
                                                   "severity": "major", "detail": {}})
        pub.wait_all()
        await until(lambda: first.seqs, 30, "the alarm at the first leader")
        await until(lambda: any(a.device_id == device for a in first.stage.engine.by_key.values()), 30,
                    "the alarm applied by the engine")
        await asyncio.sleep(5.0)  # longer than the old 3 s timer, several ticks and ack passes
        assert first.stage.stored_seq < first.seqs[0]
        assert not first.acked()
        assert await stored() == 0
        await first.kill()

        # 2. the next leader gets it again from the broker; its store is slow (the flush's transaction waits):
        # no ack meanwhile, however long; once the flush commits, the alarm is acked
        second = Leader(settings, pool, city, device, store=True)
        leaders.append(second)
        second.gate.clear()
        await second.start()
        await until(lambda: second.seqs, 30, "the alarm redelivered to the next leader")
        await until(lambda: any(a.device_id == device for a in second.stage.engine.by_key.values()), 30,
                    "the alarm applied by the second engine")
        await asyncio.sleep(4.0)
        assert not second.acked()
        assert await stored() == 0
        second.gate.set()
        await until(second.acked, 30, "the ack once stored")
        assert await stored() == 1
        assert second.stage.stored_seq >= second.seqs[-1]
        await second.kill()

        # 3. acked: nobody gets it again
        third = Leader(settings, pool, city, device, store=True)
        leaders.append(third)
        await third.start()
        await asyncio.sleep(3.0)
        assert third.seqs == []
        await third.kill()
    finally:
        for leader in leaders:
            if not all(t.done() for t in leader.tasks):
                await leader.kill()
        pub.close()
        if leaders:
            await asyncio.to_thread(leaders[0].input.discard)  # nobody resumes this session
        await pool.close()


async def test_a_clean_handover_acks_what_the_stages_settled(database_url: str, mqtt_port: int) -> None:
    """A leader stopping cleanly stops reading, lets its stages store what came in and acks it (``drain``):
    the next leader is handed nothing again."""
    settings = Settings(database_url=database_url, mqtt_url=f"mqtt://127.0.0.1:{mqtt_port}",
                        cluster=ClusterConfig(brain_client_id=unique_id("brain-drain"), brain_session_expiry_s=120))
    pool = await create_pool(database_url, StorageConfig(), max_size=4)
    city = City.load()
    device = unique_id("bts")
    pub = Publisher(mqtt_port)
    leaders: list[Leader] = []
    try:
        first = Leader(settings, pool, city, device, store=True)
        leaders.append(first)
        await first.start()
        pub.publish(f"ioc/v1/bts/{device}/event", {"ts": iso(time.time()), "type": "mains_power_lost",
                                                   "severity": "major", "detail": {}})
        pub.wait_all()
        await until(lambda: first.seqs, 30, "the alarm at the first leader")
        await first.input.drain(timeout_s=30)  # at once: no waiting for the periodic ack pass
        assert first.acked()
        await first.kill()

        second = Leader(settings, pool, city, device, store=True)
        leaders.append(second)
        await second.start()
        await asyncio.sleep(3.0)
        assert second.seqs == []
        await second.kill()
    finally:
        for leader in leaders:
            if not all(t.done() for t in leader.tasks):
                await leader.kill()
        pub.close()
        if leaders:
            await asyncio.to_thread(leaders[0].input.discard)
        await pool.close()
