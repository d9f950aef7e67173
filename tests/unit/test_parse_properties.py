"""Property tests over the parser: whatever arrives, on any channel, nothing escapes and nothing is lost.

For arbitrary topics, JSON documents (nested, huge and tiny numbers, odd strings: lone surrogates through
``\\ud800`` escapes, NUL, control characters, bidirectional overrides) and raw bytes:

* ``parse_message`` returns; every input yields records or rejections (each with a :class:`Reason`), and
  none of those is ``internal_error`` (that would be an input class the parser did not foresee);
* every accepted record's text passes the one text rule, its numbers are finite, and it is storable;
* the quarantine row of every rejection builds and holds no NUL and encodes as UTF-8 (PostgreSQL text);
* a live hub fed with the records encodes its frames and a new screen's snapshot without the fallback.

Strategies and the properties live in ``tests/support/parse_fuzz.py``; the long run is
``python -m benchmarks.fuzz_parse``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import contract as c
from tests.support.parse_fuzz import RECEIVED, check_message, encoded, jpeg_like, messages, readings

pytestmark = pytest.mark.unit

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(messages)
def test_any_message_is_stored_or_quarantined_never_raises(message: tuple[str, bytes, bool]) -> None:
    check_message(*message)


@PROPERTY_SETTINGS
@given(st.sampled_from(sorted(c.KINDS)), st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
       st.sampled_from(["telemetry", "status", "event"]), encoded(), st.booleans())
def test_json_on_every_channel_of_a_valid_topic(kind: str, device: str, channel: str, payload: bytes,
                                                retained: bool) -> None:
    check_message(f"ioc/v1/{kind}/{device}/{channel}", payload, retained)


@settings(max_examples=150, deadline=None)
@given(st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True), st.one_of(jpeg_like(), st.binary(max_size=300)))
def test_snapshot_bytes(device: str, payload: bytes) -> None:
    check_message(f"ioc/v1/camera/{device}/snapshot", payload)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(c.KINDS)), readings, st.booleans())
def test_well_formed_readings_with_hostile_fields(kind: str, doc: dict[str, Any], as_batch: bool) -> None:
    payload = json.dumps([doc, doc] if as_batch else doc, allow_nan=True).encode()
    parsed = check_message(f"ioc/v1/{kind}/D-1/telemetry", payload)
    if as_batch:  # item by item: two items in, two outcomes out
        assert len(parsed.records) + len(parsed.rejections) == 2


@pytest.mark.parametrize("text", ["\ud800", "a\udfffb", "\x00", "x\u202ey", "\x1b[2J", "\x85"])
@pytest.mark.parametrize("channel", ["status", "event", "telemetry"])
def test_escaped_odd_text_in_every_field(text: str, channel: str) -> None:
    """Lone surrogates through JSON's \\u escapes (the path orjson refuses and the stdlib takes), NUL, controls."""
    ts = RECEIVED.isoformat()
    by_channel: dict[str, list[Any]] = {
        "status": [{"state": "degraded", "reason": text, "ts": ts}, {"state": text}, {"state": "online", text: 1}],
        "event": [{"type": "door_open", "ts": ts, "detail": {text: text, "n": [text]}}, {"type": text, "ts": ts},
                  {"type": "x", "severity": text, "ts": ts}],
        "telemetry": [{"ts": ts, "metrics": {text: 1}}, {"ts": text, "metrics": {"a": 1}},
                      [{"ts": ts, "metrics": {"a": 1}}, {"ts": ts, "metrics": {text: 2}}]],
    }
    for doc in by_channel[channel]:
        check_message(f"ioc/v1/bts/B-1/{channel}", json.dumps(doc).encode())


@pytest.mark.parametrize("depth", [63, 64, 65, 500, 1100, 50_000])
@pytest.mark.parametrize("channel", ["telemetry", "status", "event"])
def test_deep_nesting(depth: int, channel: str) -> None:
    """Nesting past orjson's limit (1024) and Python's recursion limit ends as a reason, never a crash."""
    nested = "[" * depth + "]" * depth
    check_message(f"ioc/v1/bts/B-1/{channel}", nested.encode())
    ts = RECEIVED.isoformat()
    inner = '{"a": ' * depth + "1" + "}" * depth
    docs = {"telemetry": f'{{"ts": "{ts}", "metrics": {{"a": 1}}, "lat": {inner}}}',
            "status": f'{{"state": "online", "reason": {inner}}}',
            "event": f'{{"type": "x", "ts": "{ts}", "detail": {inner}}}'}
    check_message(f"ioc/v1/bts/B-1/{channel}", docs[channel].encode())
