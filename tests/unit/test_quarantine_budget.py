"""A device's rejected payloads are kept up to its budget; beyond it only their heads (every row still kept)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest.batch import quarantine_row
from ingest.quarantine_budget import HEAD_BYTES, QuarantineBudget, device_key
from ingest.records import Reason, Rejection

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 6, tzinfo=UTC)


def bad(topic: str, size: int) -> Rejection:
    return Rejection(topic, NOW, Reason.NOT_JSON, "not JSON", b"x" * size)


def test_a_flooding_device_keeps_only_heads_past_its_budget_and_others_are_untouched() -> None:
    budget = QuarantineBudget(bytes_per_min=100_000)
    flood = [bad("ioc/v1/bts/EVIL/telemetry", 30_000) for _ in range(10)]
    budget.apply(flood, limit=64 * 1024)
    rows = [quarantine_row(r, 64 * 1024) for r in flood]
    kept = [len(row[5]) for row in rows]
    assert kept[:3] == [30_000] * 3 and kept[3:] == [HEAD_BYTES] * 7  # 100 KB a minute: three whole
    assert all(row[6] == 30_000 for row in rows)  # the full length is still recorded (and hashed whole)
    other = [bad("ioc/v1/bts/GOOD/telemetry", 30_000)]
    budget.apply(other, limit=64 * 1024)
    assert len(quarantine_row(other[0], 64 * 1024)[5]) == 30_000


def test_small_rejections_never_spend_the_budget_and_topics_outside_the_contract_share_one() -> None:
    budget = QuarantineBudget(bytes_per_min=1024)
    small = [bad("ioc/v1/bts/D1/event", 100) for _ in range(50)]
    budget.apply(small, limit=64 * 1024)
    assert all(r.keep_bytes is None for r in small)
    assert device_key("junk/topic") == device_key("other") == "(outside the contract)"
    assert device_key("ioc/v1/bts/D1/telemetry") == "ioc/v1/bts/D1"
