"""Pure parts of the cluster: settings checks, the id reserve, NOTIFY payload sizing, the engine's id source."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from ioc.alerts.engine import AlertEngine
from ioc.alerts.model import Severity, Signal
from ioc.cluster.config import ClusterConfig
from ioc.cluster.ids import IdReserve, IdsExhausted
from ioc.cluster.sync import _finding, findings_payloads, health_payloads
from storage.cluster import MAX_PAYLOAD

pytestmark = pytest.mark.unit


def test_renewal_must_fit_twice_in_the_lease() -> None:
    assert ClusterConfig(lease_ttl_s=8, renew_every_s=2).lease_ttl_s == 8
    with pytest.raises(ValidationError):
        ClusterConfig(lease_ttl_s=3, renew_every_s=2)


def test_id_reserve_hands_out_in_order_and_refuses_when_empty() -> None:
    ids = IdReserve()
    ids._ids["alert"].extend([7, 9])
    assert (ids("alert"), ids("alert")) == (7, 9)
    with pytest.raises(IdsExhausted):
        ids("alert")
    with pytest.raises(IdsExhausted):
        ids("incident")


def test_engine_numbers_from_its_id_source() -> None:
    engine = AlertEngine()
    ids = IdReserve()
    ids._ids["alert"].extend([101])
    ids._ids["incident"].extend([55])
    engine.id_source = ids
    now = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    sig = Signal("mains_power_lost", "mains_power_lost:b1", True, now, device_id="b1", kind="bts", district="HB",
                 severity=Severity.MAJOR, title="BTS b1 on battery", explanation="alarm")
    ch = engine.observe([sig], now)
    assert list(ch.alerts) == [101] and list(ch.incidents) == [55]


def test_findings_payloads_stay_under_the_notify_limit() -> None:
    ts = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    rows = [(ts, f"dev-{i}", "speed_kmh", "spike", 0.9, "x" * 300, orjson.dumps({"k": "v" * 50}).decode())
            for i in range(200)]
    rows.append((ts, "big", "speed_kmh", "spike", 0.9, "huge", orjson.dumps({"k": "v" * 20_000}).decode()))
    docs = findings_payloads("me", rows)
    assert len(docs) > 1
    assert all(len(orjson.dumps(d)) < MAX_PAYLOAD for d in docs)
    back = [_finding(f) for d in docs for f in d["findings"]]
    assert [f.device_id for f in back] == [r[1] for r in rows]
    assert back[0].ts == ts and back[0].detail == {"k": "v" * 50}
    assert back[-1].detail == {}  # too big to travel: the screens get the finding without its detail


def test_health_payloads_carry_every_change_under_the_limit() -> None:
    ts = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)
    changed = {f"cam-{i:04d}": {"label": "black", "confidence": 0.97, "activity": 0.0, "objects": 0, "ts": ts}
               for i in range(400)}
    docs = health_payloads("me", changed)
    assert len(docs) > 1 and all(len(orjson.dumps(d)) < MAX_PAYLOAD for d in docs)
    merged = {k: v for d in docs for k, v in d["health"].items()}
    assert set(merged) == set(changed) and merged["cam-0000"]["ts"] == ts.isoformat()


def test_input_lag_is_the_newest_records_age_on_arrival() -> None:
    from datetime import timedelta

    from ingest.records import ParsedMessage, Reading, StatusUpdate
    from ioc.cluster.node import input_lag

    now = datetime(2026, 12, 6, 8, 0, 10, tzinfo=UTC)
    parsed = ParsedMessage([Reading("b1", "bts", now - timedelta(seconds=4), {"battery_pct": 90.0}),
                            StatusUpdate("b1", "bts", now - timedelta(seconds=1.5), "online", None)], [])
    assert input_lag(parsed, now) == 1.5
    assert input_lag(ParsedMessage([], []), now) is None
    ahead = ParsedMessage([Reading("b1", "bts", now + timedelta(seconds=3), {"battery_pct": 90.0})], [])
    assert input_lag(ahead, now) == 0.0  # a device clock ahead of ours is no negative lag
