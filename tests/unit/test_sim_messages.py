"""Every generated message passes the ingest validator; seq counts; runs are reproducible."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from ingest.parse import parse_message
from ingest.records import Reading, Snapshot, StatusUpdate
from simulators.city import build_city
from simulators.fleet import Fleet, FleetOptions, Message
from simulators.incidents import plan_incidents
from simulators.scenario import INCIDENT_KINDS, Intervals, RandomIncidents, Scenario
from simulators.transport import MemoryTransport

pytestmark = pytest.mark.unit

SPAN = 2 * 3600.0


def _scenario(seed: int = 9) -> Scenario:
    return Scenario(scale="tiny", seed=seed, snapshot_width=160, snapshot_height=96,
                    intervals=Intervals(traffic_s=60, bts_s=60, camera_s=120, snapshot_s=900),
                    random_incidents=RandomIncidents(count=14, kinds=list(INCIDENT_KINDS)))


def _run(scenario: Scenario, t0: float, ts_format: str = "ms") -> list[Message]:
    city = build_city(scenario)
    fleet = Fleet(city, city.devices, plan_incidents(city, t0, t0 + SPAN), FleetOptions(ts_format=ts_format))
    transport = MemoryTransport()
    for out in [*fleet.start(t0), *fleet.advance(t0 + SPAN), *fleet.stop(t0 + SPAN)]:
        transport.send(out)
    return transport.messages


@pytest.mark.parametrize("ts_format", ["ms", "rfc3339"])
def test_every_message_parses_without_rejection(ts_format: str) -> None:
    t0 = time.time() - SPAN
    msgs = _run(_scenario(), t0, ts_format)
    received = datetime.now(UTC)
    kinds: Counter[str] = Counter()
    for m in msgs:
        parsed = parse_message(m.topic, m.payload, received)
        assert parsed.rejections == [], (m.topic, m.payload[:200], parsed.rejections)
        for rec in parsed.records:
            kinds[type(rec).__name__] += 1
            if isinstance(rec, Reading):
                assert len(rec.metrics) == m.values
    assert kinds["Reading"] > 300 and kinds["Snapshot"] > 10 and kinds["StatusUpdate"] >= 2 * 15
    assert {Reading.__name__, Snapshot.__name__, StatusUpdate.__name__} <= set(kinds)


def test_seq_increments_and_statuses_are_retained() -> None:
    msgs = _run(_scenario(seed=2).model_copy(update={"random_incidents": RandomIncidents()}), time.time() - SPAN)
    by_dev: dict[str, list[int]] = {}
    for m in msgs:
        doc = orjson.loads(m.payload) if m.channel != "snapshot" else None
        if m.channel == "telemetry":
            by_dev.setdefault(m.device_id, []).append(doc["seq"])  # type: ignore[index]
        assert m.retain == (m.channel == "status")
    assert len(by_dev) == 15
    for seqs in by_dev.values():
        assert seqs == list(range(1, len(seqs) + 1))
    first = {}
    for m in msgs:
        first.setdefault(m.device_id, m)
    assert all(m.channel == "status" and b'"boot"' in m.payload for m in first.values())


def test_same_seed_same_messages() -> None:
    t0 = 1_763_400_000.0
    a = [(m.topic, m.payload) for m in _run(_scenario(), t0)]
    b = [(m.topic, m.payload) for m in _run(_scenario(), t0)]
    assert a == b
    c = [(m.topic, m.payload) for m in _run(_scenario(seed=10), t0)]
    assert a != c


@pytest.mark.parametrize("within", [None, 5.0])
def test_first_readings_spread_over_one_period_or_within_the_limit(within: float | None) -> None:
    city = build_city(Scenario(seed=3, scale="tiny", intervals=Intervals(bts_s=60, traffic_s=30, camera_s=60)))
    t0 = 1_700_000_000.0
    fleet = Fleet(city, city.devices, [], FleetOptions(first_report_within_s=within))
    fleet.start(t0)
    first: dict[str, float] = {}
    for out in fleet.advance(t0 + 61):
        if isinstance(out, Message) and out.channel == "telemetry":
            first.setdefault(out.device_id, orjson.loads(out.payload)["ts"] / 1000 - t0)
    assert len(first) == len(city.devices)  # every device reported in its first period
    if within is None:
        assert max(first.values()) > 20  # the even load of a real fleet: spread over the periods
    else:
        assert max(first.values()) <= within
