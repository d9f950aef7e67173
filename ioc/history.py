"""A simulated past for a new deployment or the demo: storage filled, detectors warmed up.

The numeric detectors judge a reading against what is usual for that time of day, so they stay quiet
for their first day (``DetectorConfig.warmup_days``). ``ioc history`` generates the city's normal life
(no incidents, no snapshots) for the hours before ``--until``, writes it through the ingest's own row
builder and writer, runs it through the analytics stage in simulated time (``ioc.replay``) and saves
the learned detector state where the service restores it from. ``ioc demo`` runs it beside the live
simulator, which then continues the same signals from ``--until`` on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from tqdm import tqdm

from analytics.numeric.device_state import encode_devices
from ingest.batch import Pending, RegistryCache, build_rows
from ingest.parse import parse_message
from ioc.analytics_stage import SERIES_SCOPE
from ioc.geo import City as GeoCity
from ioc.replay import Replay
from ioc.settings import Settings
from simulators.city import build_city
from simulators.fleet import Fleet, FleetOptions, Message
from simulators.scenario import RandomIncidents, Scenario, load_scenario
from storage.db import STAGING_DDL, read_backend
from storage.rollups import refresh_rollups
from storage.writes import save_series_states, write_batch

logger = logging.getLogger(__name__)

_BATCH = 5000  # messages per transaction


@dataclass(slots=True)
class HistoryStats:
    """What a history run wrote."""

    messages: int = 0
    values: int = 0
    series: int = 0
    state_bytes: int = 0
    seconds: float = 0.0


def normal_life(scenario: Scenario) -> Scenario:
    """The scenario without its incidents: history is the normal the detectors learn."""
    return scenario.model_copy(update={"incidents": [], "random_incidents": RandomIncidents(count=0)})


async def write_history(settings: Settings, scenario: Scenario, until: float, hours: float,
                        progress: bool = False) -> HistoryStats:
    """Generate, store and learn ``hours`` of normal life ending at ``until`` (epoch seconds)."""
    t_start = time.perf_counter()
    city = build_city(normal_life(scenario))
    fleet = Fleet(city, city.devices, [], FleetOptions(offline_on_exit=False, snapshots=False))
    replay = Replay(GeoCity.load(settings.live.city_file), flush_s=60.0, silence_every_s=600.0, tick_s=60.0)
    registry = RegistryCache(settings.ingest.registry_touch_s)
    stats = HistoryStats()
    t0 = until - hours * 3600.0
    conn = await asyncpg.connect(settings.database_url, statement_cache_size=settings.storage.statement_cache_size)
    try:
        if settings.ingest.write_method == "copy":
            await conn.execute(STAGING_DDL)
        pending: list[Pending] = []
        mid = 0

        async def commit() -> None:
            if pending:
                await write_batch(conn, build_rows(pending, registry, settings.ingest.quarantine_payload_bytes),
                                  settings.ingest.write_method)
                pending.clear()

        def take(msg: Message, at: float) -> None:
            nonlocal mid
            when = datetime.fromtimestamp(at, UTC)
            parsed = parse_message(msg.topic, msg.payload, when, msg.retain)
            replay.feed_parsed(parsed, when)
            mid += 1
            pending.append(Pending(mid, 1, 0, msg.channel, when, parsed))
            stats.messages += 1
            stats.values += msg.values

        for out in fleet.start(t0):
            if isinstance(out, Message):
                take(out, t0)
        steps = max(1, int((until - t0) // 60))
        for k in tqdm(range(1, steps + 1), disable=not progress, unit="sim min", desc="history"):
            now = min(until, t0 + 60.0 * k)
            for out in fleet.advance(now - 1e-6):  # up to, not including, the instant the live run starts
                if isinstance(out, Message):
                    take(out, now)
            replay.advance(now)
            if len(pending) >= _BATCH:
                await commit()
        await commit()
        await refresh_rollups(conn, await read_backend(conn), datetime.fromtimestamp(t0, UTC),
                              datetime.fromtimestamp(until, UTC))
        mon = replay.analytics.monitor
        states = encode_devices(mon, list(mon.table.device_idx))  # one row per device, as the brain saves it
        await save_series_states(conn, SERIES_SCOPE, states)
    finally:
        await conn.close()
    stats.series = replay.analytics.monitor.bank.size
    stats.state_bytes = sum(len(x) for _, x in states)
    stats.seconds = time.perf_counter() - t_start
    logger.info("history: %d messages, %d values, %d series learned, state %d bytes, %.1f s", stats.messages,
                stats.values, stats.series, stats.state_bytes, stats.seconds)
    return stats


def run_history(settings: Settings, scenario_path: Path | None, until: float | None, hours: float,
                progress: bool) -> HistoryStats:
    """Blocking entry point for the CLI."""
    scenario = load_scenario(scenario_path) if scenario_path else Scenario()
    return asyncio.run(write_history(settings, scenario, until if until is not None else time.time(), hours,
                                     progress))
