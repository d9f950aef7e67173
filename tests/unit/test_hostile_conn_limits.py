"""Connection slots per client address and in all (ioc/api/conn_limits.py)."""

from __future__ import annotations

import pytest

from ioc.api.conn_limits import ConnectionLimits, refusal

pytestmark = pytest.mark.unit


def test_an_address_gets_its_slots_and_no_more_and_others_still_get_theirs() -> None:
    limits = ConnectionLimits(per_address=3, total=10)
    taken = [limits.take(("10.0.0.1", 1000 + i)) for i in range(3)]
    assert all(status == 0 and release is not None for status, release in taken)
    assert limits.take(("10.0.0.1", 2000)) == (429, None)
    assert limits.take(("10.0.0.2", 1))[0] == 0
    assert limits.refused_address == 1 and limits.open == 4


def test_a_slot_comes_back_once_however_often_it_is_released() -> None:
    limits = ConnectionLimits(per_address=2, total=10)
    _, first = limits.take(("10.0.0.1", 1))
    _, second = limits.take(("10.0.0.1", 2))
    assert first is not None and second is not None
    first()
    first()  # the HTTP and the WebSocket protocol may both report the same connection's end
    assert limits.by_address == {"10.0.0.1": 1} and limits.open == 1
    assert limits.take(("10.0.0.1", 3))[0] == 0
    assert limits.take(("10.0.0.1", 4))[0] == 429
    second()
    assert limits.open == 1


def test_nothing_is_left_behind_once_every_connection_is_gone() -> None:
    limits = ConnectionLimits(per_address=5, total=50)
    releases = [limits.take((f"10.0.0.{i % 7}", i))[1] for i in range(30)]
    for release in releases:
        if release is not None:
            release()
    assert limits.open == 0 and limits.by_address == {}


def test_the_total_is_refused_with_503() -> None:
    limits = ConnectionLimits(per_address=5, total=4)
    for i in range(4):
        assert limits.take((f"10.0.0.{i}", 1))[0] == 0
    assert limits.take(("10.0.0.9", 1)) == (503, None)
    assert limits.refused_total == 1


def test_proxies_count_against_the_total_only_and_ipv6_by_its_64() -> None:
    limits = ConnectionLimits(per_address=2, total=100, proxies=["10.1.0.0/16", "192.0.2.7"])
    for i in range(10):
        assert limits.take(("10.1.2.3", i))[0] == 0
        assert limits.take(("192.0.2.7", i))[0] == 0
    assert limits.take(("2001:db8::1", 1, 0, 0))[0] == 0
    assert limits.take(("2001:db8::ffff:2", 1, 0, 0))[0] == 0
    assert limits.take(("2001:db8::abcd", 1, 0, 0))[0] == 429  # the same /64
    assert limits.take(("2001:db8:0:1::1", 1, 0, 0))[0] == 0
    assert limits.key(("::ffff:10.0.0.1", 1, 0, 0)) == "10.0.0.1"
    assert limits.key("") is None and limits.key(None) is None  # a Unix socket: the total only


def test_the_total_stays_under_half_the_open_files_limit() -> None:
    limits = ConnectionLimits.for_files(256, 8192, (), 4096)
    assert limits.total == 2048 and limits.per_address == 256
    assert ConnectionLimits.for_files(256, 8192, (), 1_048_576).total == 8192
    assert ConnectionLimits.for_files(256, 8192, (), 100).per_address == 64


def test_a_refusal_is_a_whole_http_answer_that_says_when_to_come_back() -> None:
    for status in (429, 503):
        answer = refusal(status)
        head, body = answer.split(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 %d " % status)
        assert b"retry-after: " in head and b"connection: close" in head
        assert b"content-length: %d" % len(body) in head
