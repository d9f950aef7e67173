"""The per-device caps applied after parsing (ingest/guard.py): what is kept, what is quarantined, in order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingest.guard import MetricNameGuard
from ingest.records import DeviceEvent, ParsedMessage, Reading, Reason, Record, StatusUpdate

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 6, 8, 0, tzinfo=UTC)


def _reading(dev: str, *names: str, at: int = 0) -> Reading:
    return Reading(dev, "bts", T0 + timedelta(seconds=at), dict.fromkeys(names, 1.0))


def test_a_message_whose_records_are_all_admitted_comes_back_as_it_was() -> None:
    guard = MetricNameGuard(max_per_device=3, max_event_types=2)
    records: list[Record] = [_reading("BTS-1", "a", "b"), StatusUpdate("BTS-1", "bts", T0, "online", None),
               DeviceEvent("BTS-1", "bts", T0, "door_open", "major", {}), _reading("BTS-1", "a", "c", at=1)]
    parsed = ParsedMessage(list(records), [])
    assert guard.apply(parsed, "t") is parsed
    assert parsed.records == records and parsed.rejections == []


def test_only_the_records_past_a_cap_are_quarantined_and_the_rest_keep_their_order() -> None:
    guard = MetricNameGuard(max_per_device=3, max_event_types=1)
    first, over, known = _reading("BTS-1", "a", "b"), _reading("BTS-1", "c", "d", at=1), _reading("BTS-1", "b", at=2)
    status = StatusUpdate("BTS-1", "bts", T0, "online", None)
    event, new_type = (DeviceEvent("BTS-1", "bts", T0, "door_open", "major", {}),
                       DeviceEvent("BTS-1", "bts", T0, "fire", "critical", {}))
    parsed = guard.apply(ParsedMessage([first, over, status, known, event, new_type], []), "ioc/v1/bts/BTS-1/telemetry")
    assert parsed.records == [first, status, known, event]
    assert [r.reason for r in parsed.rejections] == [Reason.TOO_MANY_METRICS, Reason.TOO_MANY_EVENT_TYPES]
    assert "['c', 'd']" in parsed.rejections[0].detail and "'fire'" in parsed.rejections[1].detail
    # what was admitted stays admitted; the refused names and type were not learnt
    assert guard.apply(ParsedMessage([_reading("BTS-1", "a", "b", "c", at=3)], []), "t").records
    assert not guard.apply(ParsedMessage([_reading("BTS-1", "d", at=4)], []), "t").records
    assert not guard.apply(ParsedMessage([new_type], []), "t").records
