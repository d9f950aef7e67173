"""Hypothesis strategies for whatever may arrive over MQTT, and the properties every message must keep.

Used by the property tests (``tests/unit/test_parse_properties.py``) and the long fuzz run
(``python -m benchmarks.fuzz_parse``).
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import strategies as st

from ingest import contract as c
from ingest.batch import quarantine_row
from ingest.metrics import HANDLER_ERRORS
from ingest.parse import parse_message
from ingest.records import DeviceEvent, ParsedMessage, Reading, Reason, Snapshot, StatusUpdate
from ingest.text import check_text
from ioc.live.filters import Subscription
from ioc.live.hub import LiveHub

RECEIVED = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
QUARANTINE_LIMIT = 64 * 1024

# --- strategies ------------------------------------------------------

ODD_CHARS = ["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\u202e", "\u202a", "\u2066", "\u2069", "\x1b", "\x07",
             "\x7f", "\x85", "\x9f", "\t", "\n", "\r", "\ufffd", "\ufeff", "\u200b", "\U0001f600", "\u0301", "é",
             "\\", '"', "'", "/", "%s", "{}", "\U0010ffff"]
odd_text = st.lists(st.one_of(st.sampled_from(ODD_CHARS), st.characters()), max_size=24).map("".join)
plain_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", fullmatch=True)
names = st.one_of(plain_names, odd_text, st.sampled_from(["", "a" * 65, "speed_kmh", "fps", "1abc"]))

huge_numbers = st.sampled_from([0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
                                -1.7976931348623157e308, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1,
                                10**308, 10**309, -(10**400), 1e-400, float("nan"), float("inf"),
                                float("-inf")])
numbers = st.one_of(st.integers(), st.integers(min_value=-(2**90), max_value=2**90),
                    st.floats(allow_nan=True, allow_infinity=True), huge_numbers)
leaves = st.one_of(st.none(), st.booleans(), numbers, odd_text)
json_docs = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                         st.dictionaries(names, inner, max_size=5)),
                         max_leaves=20)

offsets = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(min_value=-1439, max_value=1439))
recent = st.datetimes(min_value=datetime(2026, 11, 21), max_value=datetime(2026, 11, 22, 8, 4),
                      timezones=st.just(UTC))
ts_values = st.one_of(
    recent.map(lambda d: d.isoformat()),
    recent.map(lambda d: int(d.timestamp() * 1000)),
    recent.map(lambda d: d.timestamp() * 1000),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),  # no offset
    st.sampled_from(["9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999999-23:59", "0001-01-01T00:00:00+01:00",
                     "0001-01-01T00:00:00Z", "2026-11-22T08:00:00Z", "2026-02-30T00:00:00Z", "2026-11-22 08:00Z",
                     "2026-11-22T08:00:00+24:00", "20261122T080000Z", "+275760-09-13T00:00:00Z", "now", "",
                     "2026-11-22T08:00:00\x00Z", "2026-11-22T08:00:00\ud800Z", "２０２６-11-22T08:00:00Z"]),
    numbers, odd_text, json_docs,
)


def _optional(doc: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    return {**doc, **extra}


readings = st.builds(
    _optional,
    st.fixed_dictionaries({"metrics": st.one_of(st.dictionaries(names, st.one_of(numbers, leaves), max_size=6),
                                                st.dictionaries(plain_names, numbers, min_size=1, max_size=4),
                                                json_docs)}),
    st.fixed_dictionaries({}, optional={"ts": ts_values, "seq": st.one_of(numbers, json_docs),
                                        "lat": st.one_of(numbers, json_docs), "lon": st.one_of(numbers, json_docs)}),
)
statuses = st.fixed_dictionaries({}, optional={"state": st.one_of(st.sampled_from(sorted(c.STATES)), json_docs),
                                               "reason": st.one_of(odd_text, leaves, json_docs),
                                               "ts": ts_values})
events = st.fixed_dictionaries({}, optional={"type": st.one_of(plain_names, names, json_docs),
                                             "severity": st.one_of(st.sampled_from(sorted(c.SEVERITIES)), json_docs),
                                             "detail": st.one_of(st.dictionaries(names, json_docs, max_size=5),
                                                                 json_docs),
                                             "ts": ts_values})
documents = st.one_of(readings, st.lists(st.one_of(readings, json_docs), min_size=0, max_size=6), statuses, events,
                      json_docs)


@st.composite
def encoded(draw: st.DrawFn, docs: st.SearchStrategy[Any] = documents) -> bytes:
    """A document as JSON bytes: \\u escapes or raw UTF-8 (lone surrogates then come out as invalid UTF-8)."""
    doc = draw(docs)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), allow_nan=True)
    data = text.encode("utf-8", "surrogatepass")
    cut = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=len(data))))
    return data if cut is None else data[:cut]


@st.composite
def jpeg_like(draw: st.DrawFn) -> bytes:
    """SOI, some segments, a frame header claiming any size, scan bytes, EOI (and sometimes junk)."""
    out = bytearray(b"\xff\xd8")
    for _ in range(draw(st.integers(0, 3))):
        body = draw(st.binary(max_size=40))
        out += bytes([0xFF, draw(st.sampled_from([0xE0, 0xE1, 0xDB, 0xC4, 0xFE, 0xDD]))])
        out += (len(body) + 2 if draw(st.booleans()) else draw(st.integers(0, 0xFFFF))).to_bytes(2, "big") + body
    if draw(st.booleans()):
        marker = draw(st.sampled_from([0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC9, 0xCF, 0xC8]))
        width, height = draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF))
        out += bytes([0xFF, marker, 0, 11, 8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big")
        out += b"\x01\x01\x11\x00"
    out += draw(st.binary(min_size=0, max_size=200))
    if draw(st.booleans()):
        out += b"\xff\xd9"
    return bytes(out)


kinds = st.one_of(st.sampled_from(sorted(c.KINDS)), st.sampled_from(["", "Camera", "drone", "camera "]))
channels = st.one_of(st.sampled_from(sorted(c.CHANNELS)), st.sampled_from(["", "snap", "telemetry/x", "#"]))
device_ids = st.one_of(st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
                       st.text(max_size=80), st.sampled_from(["", "a" * 65, "..", "D\x00", "D\u202e1"]))
# Topics come off the wire as UTF-8 (paho refuses anything else), so no lone surrogates in them.
wire_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=80)
topics = st.one_of(
    st.builds(lambda k, d, ch: f"ioc/v1/{k}/{d}/{ch}", kinds, device_ids, channels),
    st.builds(lambda k, d, ch: f"ioc/v1/{k}/{d}/{ch}", st.sampled_from(sorted(c.KINDS)),
              st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True), st.sampled_from(sorted(c.CHANNELS))),
    st.lists(wire_text, max_size=8).map("/".join),
    wire_text,
)
payloads = st.one_of(encoded(), st.binary(max_size=600), jpeg_like())
messages = st.tuples(topics, payloads, st.booleans())


# --- the properties -----------------------------------------------------------------------------------------

def _strings(doc: Any) -> list[str]:
    """Every key and string in a JSON-like document (iteratively: any depth)."""
    out, todo = [], [doc]
    while todo:
        item = todo.pop()
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            out += [k for k in item if isinstance(k, str)]
            todo += item.values()
        elif isinstance(item, list | tuple):
            todo += item
    return out


def _storable(value: str) -> None:
    assert "\x00" not in value
    value.encode("utf-8")  # strict: a lone surrogate raises here (and in PostgreSQL)


def check_message(topic: str, payload: bytes, retained: bool = False) -> ParsedMessage:
    """Run one message through the parser, the quarantine and a live hub; assert the properties."""
    parsed = parse_message(topic, payload, RECEIVED, retained)
    assert parsed.records or parsed.rejections, "neither stored nor quarantined"
    for rej in parsed.rejections:
        assert isinstance(rej.reason, Reason)
        assert rej.reason is not Reason.INTERNAL_ERROR, rej.detail
        assert rej.detail
        for field in quarantine_row(rej, QUARANTINE_LIMIT):
            if isinstance(field, str):
                _storable(field)
    for rec in parsed.records:
        check_text(rec.device_id, field="device_id")
        check_text(rec.kind, field="kind")
        assert rec.ts.tzinfo is not None
        if isinstance(rec, Reading):
            assert rec.metrics
            for name, value in rec.metrics.items():
                check_text(name, field="metric")
                assert type(value) is float and math.isfinite(value)
            assert rec.seq is None or 0 <= rec.seq < 2**63
            for v in (rec.lat, rec.lon):
                assert v is None or math.isfinite(v)
        elif isinstance(rec, StatusUpdate):
            check_text(rec.state, field="state")
            if rec.reason is not None:
                check_text(rec.reason, field="reason")
        elif isinstance(rec, DeviceEvent):
            check_text(rec.type, field="type")
            check_text(rec.severity, field="severity")
            for text in _strings(rec.detail):
                check_text(text, multiline=True, field="detail")
            orjson.dumps(rec.detail)  # stored as jsonb and sent on the live feed as it is
        elif isinstance(rec, Snapshot):
            assert 0 < rec.width <= c.MAX_IMAGE_WIDTH and 0 < rec.height <= c.MAX_IMAGE_HEIGHT
            assert rec.width * rec.height <= c.MAX_IMAGE_PIXELS
    fallback = HANDLER_ERRORS.labels("frame_encode")._value.get()
    hub = LiveHub()
    hub.on_parsed(parsed)
    for frame in hub.ring:
        orjson.loads(frame.text)
    orjson.loads(hub.snapshot_frame(Subscription()))
    assert HANDLER_ERRORS.labels("frame_encode")._value.get() == fallback, "a frame needed the encode fallback"
    return parsed


valid_json_messages = st.tuples(
    st.builds(lambda k, d, ch: f"ioc/v1/{k}/{d}/{ch}", st.sampled_from(sorted(c.KINDS)),
              st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
              st.sampled_from(["telemetry", "status", "event"])),
    encoded(), st.booleans())
snapshot_messages = st.tuples(
    st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).map(lambda d: f"ioc/v1/camera/{d}/snapshot"),
    st.one_of(jpeg_like(), st.binary(max_size=300)), st.just(False))
#: Everything at once: the long fuzz run draws from this.
all_messages = st.one_of(messages, valid_json_messages, snapshot_messages)
