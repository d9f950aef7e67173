"""A large event's detail read from its text, never built as a tree (ingest/detail.py ``read_large_event``): stored
the same as the tree path would store it, carried as the same bounded view, and every input it cannot read so goes
the tree's way (quarantined with the same reason, or cleaned node by node)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest

from ingest.detail import TRUNCATED, VIEW_BYTES, read_large_event
from ingest.parse import parse_message
from ingest.records import DeviceEvent, Reason
from ingest.text import clean_json

pytestmark = pytest.mark.unit

T0 = datetime.now(UTC)
TOPIC = "ioc/v1/bts/BTS-1/event"
TS = int(T0.timestamp() * 1000)


def _payload(detail_text: str, **fields: object) -> bytes:
    head = {"ts": TS, "type": "door_open", "severity": "critical", **fields}
    return (json.dumps(head)[:-1] + ', "detail": ' + detail_text + "}").encode()


def _event(payload: bytes) -> DeviceEvent:
    parsed = parse_message(TOPIC, payload, T0)
    assert parsed.rejections == [] and len(parsed.records) == 1
    rec = parsed.records[0]
    assert isinstance(rec, DeviceEvent)
    return rec


def test_a_full_detail_is_read_from_its_text_stored_whole_and_viewed_by_its_first_members() -> None:
    detail = {f"k{i}": [i, {"a": "v"}] for i in range(9000)}
    payload = _payload(json.dumps(detail))
    assert read_large_event(payload) is not None  # the text's way, no tree
    rec = _event(payload)
    assert rec.stored_detail is not None and orjson.loads(rec.stored_detail) == detail
    assert rec.detail["k0"] == [0, {"a": "v"}] and "k8999" not in rec.detail
    assert len(orjson.dumps(rec.detail)) < 2 * VIEW_BYTES
    marker = rec.detail[TRUNCATED]
    assert marker["detail_bytes"] == len(rec.stored_detail.encode()) and 0 < marker["kept_bytes"] < 2 * VIEW_BYTES
    assert (rec.type, rec.severity) == ("door_open", "critical")


def test_the_text_rule_applies_to_escaped_and_raw_characters_as_the_tree_cleaner_applies_it() -> None:
    hostile = ('{"k\\u0000": "\\b\\f\\u001B[31m \\u001f \\u007F\\u0085 \\u202E\\u2066 \\ud83d\\ude00 '
               '\\\\u0000 \\\\\\\\", '
               '"raw": "\u202e\u2069\x7f\x85 tab\\tnl\\n\\r", "\\u00e9t\u00e9": "\\"q\\" \\/", "n": [1.5, -2e10, 0]}')
    members = ", ".join(f'"m{i}": {hostile}' for i in range(300))
    payload = _payload("{" + members + "}")
    assert len(payload) > VIEW_BYTES and read_large_event(payload) is not None
    rec = _event(payload)
    assert rec.stored_detail is not None
    assert orjson.loads(rec.stored_detail) == clean_json(orjson.loads(payload)["detail"])
    for refused in ("\x00", "\u202e", "\u2066", "\x7f", "\x85", "\x1b", "\x1f", "\x08", "\x0c"):
        assert refused not in json.dumps(orjson.loads(rec.stored_detail), ensure_ascii=False)
    assert "\U0001f600" in orjson.loads(rec.stored_detail)["m0"]["k\ufffd"]  # an escaped surrogate pair is a character
    assert rec.detail["m0"] == clean_json(orjson.loads(payload)["detail"]["m0"])  # the view: cleaned the same


@pytest.mark.parametrize(("detail_text", "why"), [
    ('{"big": ' + str(2**70) + "}", "an integer past 64 bits (the tree keeps it as a string)"),
    ('{"x": 1e999}', "an exponent of 3 digits"),
    ('{"x": "\\ud800"}', "a lone surrogate (msgspec refuses it)"),
])
def test_what_the_text_way_cannot_read_goes_the_trees_way(detail_text: str, why: str) -> None:
    payload = _payload(f'{{"pad": "{"p" * VIEW_BYTES}", "v": {detail_text}}}')
    assert read_large_event(payload) is None, why
    rec = _event(payload)  # stored as before (ingest/detail.py bound_detail)
    assert rec.stored_detail is not None and orjson.loads(rec.stored_detail)["pad"] == "p" * VIEW_BYTES


@pytest.mark.parametrize(("payload", "reason"), [
    (_payload('{"a": "%s", "b": tru}' % ("x" * VIEW_BYTES)), Reason.NOT_JSON),
    (_payload('{"a": "%s\xff"}' % ("x" * VIEW_BYTES)).replace(b"\xc3\xbf", b"\xff"), Reason.NOT_UTF8),
    (_payload('[%s]' % ("1," * VIEW_BYTES + "1")), Reason.BAD_SHAPE),  # detail not an object
    (_payload('{"a": "%s"}' % ("x" * VIEW_BYTES), type=7), Reason.BAD_SHAPE),
    (_payload('{"a": "%s"}' % ("x" * VIEW_BYTES), ts="yesterday"), Reason.BAD_TS),
])
def test_a_large_bad_event_is_quarantined_with_the_reason_the_tree_gives(payload: bytes, reason: Reason) -> None:
    parsed = parse_message(TOPIC, payload, T0)
    assert parsed.records == [] and [r.reason for r in parsed.rejections] == [reason]
    assert parsed.rejections[0].payload == payload  # kept whole (within the quarantine's budget)


def test_a_detail_whose_first_member_fills_the_view_is_carried_as_its_marker() -> None:
    detail = {"one": list(range(30_000)), "two": 2}
    rec = _event(_payload(json.dumps(detail)))
    assert rec.stored_detail is not None and orjson.loads(rec.stored_detail) == detail
    assert set(rec.detail) == {TRUNCATED} and rec.detail[TRUNCATED]["kept_bytes"] == 0
