"""What one message may cost: an event's large detail stored whole and carried bounded (ingest/detail.py), and each
device's share of the event loop (ingest/device_rate.py)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import orjson
import paho.mqtt.client as mqtt
import pytest

from ingest import contract as c
from ingest.batch import Pending, RegistryCache, build_rows, quarantine_row
from ingest.detail import TRUNCATED, VIEW_BYTES, bound_detail, clean_json_text
from ingest.device_rate import MESSAGE_COST, DeviceRate
from ingest.guard import MetricNameGuard
from ingest.handling import handle_message
from ingest.parse import parse_message
from ingest.records import DeviceEvent, ParsedMessage, Reason
from ingest.text import clean_json
from ioc.alerts import rules

pytestmark = pytest.mark.unit

T0 = datetime.now(UTC)
TOPIC = "ioc/v1/bts/BTS-1/event"


def _event(detail: dict[str, object]) -> bytes:
    return json.dumps({"ts": int(T0.timestamp() * 1000), "type": "door_open", "severity": "critical",
                       "detail": detail}, ensure_ascii=False).encode()


def _full() -> dict[str, object]:
    """The red team's detail: 9,000 keys, 36,000 JSON nodes, filling the payload limit."""
    return {f"k{i}": [i, {"a": "v"}] for i in range(9000)}


def test_a_detail_filling_the_payload_is_stored_whole_and_carried_bounded_with_a_marker() -> None:
    payload = _event(_full())
    assert c.MAX_JSON_BYTES - 40_000 < len(payload) <= c.MAX_JSON_BYTES
    rec = parse_message(TOPIC, payload, T0).records[0]  # its cost (~10 ms) is measured by the flood test's figures
    assert isinstance(rec, DeviceEvent)
    assert rec.stored_detail is not None and orjson.loads(rec.stored_detail) == _full()
    marker = rec.detail[TRUNCATED]
    assert marker["detail_bytes"] == len(rec.stored_detail.encode()) and marker["whole_in"] == "device_events"
    assert len(orjson.dumps(rec.detail)) < 2 * VIEW_BYTES
    assert rec.detail["k0"] == [0, {"a": "v"}] and "k8999" not in rec.detail  # its first keys, in order
    # the view goes on into the alert's evidence and the live frame; the whole into device_events
    (signal,) = rules.from_event(rec, lambda dev: (None, None, None, None))
    assert len(orjson.dumps(signal.evidence)) < 2 * VIEW_BYTES and signal.evidence[TRUNCATED] == marker
    rows = build_rows([Pending(1, 1, 1, "event", T0, ParsedMessage([rec], []), len(payload))], RegistryCache(5.0),
                      65536)
    assert orjson.loads(rows.events[0][4]) == _full()


def test_the_stored_detail_follows_the_text_rule_as_the_tree_cleaner_does() -> None:
    texts = {"a": "v\u202e\x7f\x85", "b": "tab\tnl\n\\u0000 \\\\b", "c": 2**70}
    hostile: dict[str, object] = {f"k{i}\x00": [i, texts] for i in range(2000)}
    hostile["\x08key\x0c"] = "\x1b[31m"
    payload = _event(hostile)
    assert len(payload) > VIEW_BYTES
    rec = parse_message(TOPIC, payload, T0).records[0]
    assert isinstance(rec, DeviceEvent) and rec.stored_detail is not None
    assert orjson.loads(rec.stored_detail) == clean_json(orjson.loads(payload)["detail"])
    assert "\x00" not in rec.stored_detail and "\u202e" not in rec.stored_detail
    assert "\\\\u0000" in rec.stored_detail  # a backslash the device sent before "u0000" is text, kept
    assert all("\x00" not in k for k in rec.detail)
    # a lone surrogate (only the lenient parser reads it, orjson cannot write it): the tree cleaner's way
    lone = payload.replace(b"tab", b"\\ud800", 1)
    rec = parse_message(TOPIC, lone, T0).records[0]
    assert isinstance(rec, DeviceEvent) and rec.stored_detail is not None and "\ufffd" in rec.stored_detail
    assert orjson.loads(rec.stored_detail) == clean_json(json.loads(lone)["detail"])
    # written as orjson writes it: \u00XX, \b, \f escapes and raw DEL, C1, bidi characters
    assert clean_json_text(orjson.dumps(["\x00\x08\x0c\t\n\r\x1f\x7f\x85\u2066 \\u0000"]).decode()) == \
        '["\ufffd\ufffd\ufffd\\t\\n\\r\ufffd\ufffd\ufffd\ufffd \\\\u0000"]'


def test_small_details_and_large_payloads_with_small_details_are_carried_whole() -> None:
    small = {"site": "HP-0412", "battery_pct": 96, "text": "a\x00b"}
    view, stored = bound_detail(dict(small), 200)
    assert view == clean_json(small) and stored is None
    view, stored = bound_detail(dict(small), c.MAX_JSON_BYTES)  # a large payload, a small detail
    assert view == clean_json(small) and stored is None and TRUNCATED not in view
    long_text = {"log": "x" * 5000}  # one long string is cut in the view, kept whole in the store
    view, stored = bound_detail(long_text, 6000 + VIEW_BYTES)
    assert len(view["log"]) == 1024 and view[TRUNCATED] and orjson.loads(stored or "") == long_text
    deep: dict[str, object] = {"v": 1}
    for _ in range(40):
        deep = {"d": deep}
    view, stored = bound_detail(deep, 2 * VIEW_BYTES)
    assert "(nested too deep)" in orjson.dumps(view).decode() and orjson.loads(stored or "") == deep


def test_a_device_past_its_share_is_quarantined_unparsed_and_others_keep_theirs() -> None:
    rate = DeviceRate(bytes_per_s=1000, burst_bytes=300_000)
    big = _event(_full())[:40_000]  # not even JSON: over the share it is not parsed at all
    admitted = [rate.check(TOPIC, big, T0) is None for _ in range(10)]
    assert admitted == [True] * 7 + [False] * 3  # 7 x (40,000 + 256) fit in 300,000
    over = rate.check(TOPIC, big, T0)
    assert over is not None and over.records == []
    (rej,) = over.rejections
    assert rej.reason is Reason.DEVICE_RATE and rej.payload == big and "'bts/BTS-1'" in rej.detail
    assert quarantine_row(rej, 65536)[2] == "device_rate"
    # another device, a snapshot (a 64th of its bytes), a topic outside the contract: their own buckets or none
    assert rate.check("ioc/v1/bts/BTS-2/event", big, T0) is None
    assert rate.check("ioc/v1/camera/CAM-1/snapshot", b"\xff" * 4_000_000, T0) is None
    assert all(rate.check("elsewhere/x", big, T0) is None for _ in range(5))
    # refilled with time; no bound at 0
    rate._buckets["ioc/v1/bts/BTS-1"] = (0.0, time.monotonic() - 41)
    assert rate.check(TOPIC, big, T0) is None
    unbounded = DeviceRate(0, 0)
    assert all(unbounded.check(TOPIC, big, T0) is None for _ in range(50))


def test_the_default_share_never_touches_a_normal_device_nor_its_backlog() -> None:
    from ingest.config import IngestConfig

    cfg = IngestConfig()
    rate = DeviceRate(cfg.device_bytes_per_s, cfg.device_burst_bytes)
    reading = orjson.dumps({"ts": 1, "metrics": {name: 1.0 for name in c.METRICS["bts"]}})
    # a BTS's readings every 10 s for 20 hours, all delivered at once after an outage
    assert all(rate.check("ioc/v1/bts/B/telemetry", reading, T0) is None for _ in range(20 * 360))
    assert (len(reading) + MESSAGE_COST) * 20 * 360 < cfg.device_burst_bytes
    # a store-and-forward traffic sensor uploading two weeks of its 30-second readings at once, in batches of 1,000
    # (4.8 MB), after two weeks without a link: stored, not quarantined
    gateway = DeviceRate(cfg.device_bytes_per_s, cfg.device_burst_bytes)
    metrics = {name: 1.0 for name in c.METRICS["traffic"]}
    batch = orjson.dumps([{"ts": 1_700_000_000_000 + 30_000 * k, "metrics": metrics} for k in range(1000)])
    assert all(gateway.check("ioc/v1/traffic/T/telemetry", batch, T0) is None for _ in range(2 * 7 * 2880 // 1000))


def test_handle_message_tells_the_sinks_of_a_message_over_the_share_with_no_records() -> None:
    seen: list[ParsedMessage] = []
    rate, guard = DeviceRate(1, 1000), MetricNameGuard()
    msg = mqtt.MQTTMessage(topic=TOPIC.encode())
    msg.payload = _event({"a": "x" * 200_000})  # a full bucket takes any message the contract allows, once
    assert handle_message(msg, T0, guard, (seen.append,), stores=False, rate=rate).records
    parsed = handle_message(msg, T0, guard, (seen.append,), stores=False, rate=rate)
    assert parsed.records == [] and [r.reason for r in parsed.rejections] == [Reason.DEVICE_RATE]
    assert len(seen) == 2 and seen[1] is parsed
