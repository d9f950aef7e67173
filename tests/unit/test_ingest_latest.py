"""The ingest worker's coalesced latest values (telemetry_latest's input)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingest.latest import LatestValues

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def test_keeps_the_newest_value_per_key_whatever_the_arrival_order() -> None:
    latest = LatestValues()
    latest.add([(T0 + timedelta(seconds=60), "bts-1", "battery_pct", 80.0, 2),
                (T0, "bts-1", "battery_pct", 90.0, 1),  # late: older than what is held
                (T0, "bts-1", "mains_power", 1.0, 1)])
    latest.add([(T0 + timedelta(seconds=30), "bts-1", "battery_pct", 85.0, None),
                (T0 + timedelta(seconds=120), "bts-2", "battery_pct", 50.0, None)])
    assert len(latest) == 3
    assert sorted(latest.take()) == [("bts-1", "battery_pct", T0 + timedelta(seconds=60), 80.0),
                                     ("bts-1", "mains_power", T0, 1.0),
                                     ("bts-2", "battery_pct", T0 + timedelta(seconds=120), 50.0)]
    assert len(latest) == 0 and latest.take() == []


class _RefusingConnection:
    async def execute(self, *args: object) -> None:
        raise ConnectionError("database gone")


async def test_a_failed_write_keeps_its_rows_and_newer_ones_win() -> None:
    latest = LatestValues()
    latest.add([(T0, "cam-1", "fps", 25.0, None)])
    with pytest.raises(ConnectionError):
        await latest.flush(_RefusingConnection())
    latest.add([(T0 + timedelta(seconds=5), "cam-1", "fps", 12.0, None)])  # arrived meanwhile
    latest.put_back([("cam-1", "fps", T0 - timedelta(seconds=5), 1.0)])  # an older value coming back loses
    assert latest.take() == [("cam-1", "fps", T0 + timedelta(seconds=5), 12.0)]


class _Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    async def execute(self, *args: object) -> None:
        self.calls.append(args)


async def test_the_write_sends_one_row_per_key_in_key_order_with_exact_values() -> None:
    import orjson

    latest = LatestValues()
    ts = T0 + timedelta(microseconds=123_457)
    latest.add([(ts, "bts-2", "temp_c", 0.1 + 0.2, 7), (T0, "bts-2", "temp_c", 5.0, 6),  # the newer wins
                (T0, "bts-10", "z_metric", -1e100, None), (T0, "bts-10", "a_metric", 1e-300, None)])
    latest.add([(T0, "bts-1", "fps", 25.0, 1)])
    conn = _Recording()
    assert await latest.flush(conn) == 4 and len(latest) == 0
    [(sql, doc)] = conn.calls
    assert "telemetry_latest" in str(sql)
    rows = orjson.loads(str(doc))
    assert [(r[1], r[2]) for r in rows] == [("bts-1", "fps"), ("bts-10", "a_metric"), ("bts-10", "z_metric"),
                                            ("bts-2", "temp_c")]  # sorted: workers lock rows in one order
    assert [datetime.fromisoformat(r[0]) for r in rows] == [T0, T0, T0, ts]
    assert [r[3] for r in rows] == [25.0, 1e-300, -1e100, 0.1 + 0.2]  # floats round-trip exactly
    await latest.flush(conn)
    assert len(conn.calls) == 1  # nothing pending: nothing written
