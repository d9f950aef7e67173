"""A device's share split between the ingest workers of one share group (ingest/device_rate.py, ingest/members.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ingest.contract import MAX_JSON_BYTES
from ingest.device_rate import MESSAGE_COST, DeviceRate
from ingest.members import share_group

pytestmark = pytest.mark.unit

T0 = datetime.now(UTC)


def test_a_worker_of_n_grants_a_device_an_nth_of_its_share_and_never_less_than_the_largest_message() -> None:
    rate = DeviceRate(bytes_per_s=20_000, burst_bytes=1_000_000)
    assert (rate.shares, rate.rate, rate.burst) == (1, 20_000, 1_000_000)
    rate.share(2)
    assert (rate.shares, rate.rate, rate.burst) == (2, 10_000, 500_000)
    admitted = sum(rate.check("ioc/v1/bts/B/event", b"x" * 10_000, T0) is None for _ in range(100))
    assert admitted == 500_000 // (10_000 + MESSAGE_COST)
    rate.share(100)  # a full bucket still takes any message the contract allows
    assert rate.burst == MAX_JSON_BYTES + MESSAGE_COST
    rate.share(0)  # unknown: a whole share
    assert (rate.shares, rate.rate) == (1, 20_000)
    unbounded = DeviceRate(0, 0)
    unbounded.share(3)
    assert all(unbounded.check("ioc/v1/bts/B/event", b"x" * 100_000, T0) is None for _ in range(20))


def test_the_share_group_is_read_from_the_subscription() -> None:
    assert share_group(("$share/ioc-7f3a/ioc/v1/#",)) == "ioc-7f3a"
    assert share_group(("ioc/v1/#",)) is None
