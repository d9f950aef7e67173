"""``ioc history``: a simulated past stored through the ingest's writer, detector state saved for the service."""

from __future__ import annotations

import asyncpg
import pytest

from analytics.numeric.device_state import restore_devices
from analytics.numeric.monitor import NumericMonitor
from ioc.analytics_stage import SERIES_SCOPE
from ioc.history import write_history
from ioc.settings import Settings
from simulators.clock import parse_time
from simulators.scenario import IncidentSpec, Scenario
from storage.writes import load_series_states
from tests.conftest import BASE_DSN, create_database, drop_database

pytestmark = pytest.mark.integration


async def test_history_is_stored_idempotently_and_warms_the_detectors() -> None:
    dsn = await create_database(BASE_DSN)
    try:
        settings = Settings(database_url=dsn)
        # Incidents in the scenario are for the live run: history is normal life.
        scenario = Scenario(scale="tiny", seed=5, incidents=[IncidentSpec(kind="power_outage", at=600)])
        until = parse_time("2026-11-20T12:00:00+07:00")
        stats = await write_history(settings, scenario, until, hours=3.0)
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetchval("SELECT count(*) FROM telemetry")
            first, last = await conn.fetchrow("SELECT min(ts), max(ts) FROM telemetry")
            events = await conn.fetchval("SELECT count(*) FROM device_events WHERE type = 'mains_power_lost'")
            devices = await conn.fetchval("SELECT count(*) FROM devices")
            saved = await load_series_states(conn, SERIES_SCOPE)
            assert rows == stats.values and devices == 15  # tiny city: 6 BTS, 3 cameras, 6 traffic sensors
            assert until - 3 * 3600 <= first.timestamp() and last.timestamp() < until
            assert events == 0
            assert len(saved) == devices  # the learned state, one row per device
            monitor = NumericMonitor()
            assert restore_devices(monitor, saved) == devices
            assert monitor.bank.size == stats.series > 0
            # Written again (a second demo start over the same hours): nothing is duplicated.
            await write_history(settings, scenario, until, hours=3.0)
            assert await conn.fetchval("SELECT count(*) FROM telemetry") == rows
        finally:
            await conn.close()
    finally:
        await drop_database(BASE_DSN, dsn)
