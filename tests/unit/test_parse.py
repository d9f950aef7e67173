"""The parser: every refusal class gets its reason; good payloads become typed records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingest.parse import jpeg_size, parse_message
from ingest.records import DeviceEvent, Reading, Reason, Snapshot, StatusUpdate
from tests.support.corpus import hostile_accepted_cases, malformed_cases, now_ms, small_jpeg

pytestmark = pytest.mark.unit



# Ids are the cases' names: a payload holds the clock, and pytest-xdist's workers must collect the same ids.
@pytest.mark.parametrize(("name", "topic", "payload", "reason"), [pytest.param(*c, id=c[0]) for c in malformed_cases()])
def test_malformed_payload_is_rejected_with_its_reason(name: str, topic: str, payload: bytes, reason: str) -> None:
    parsed = parse_message(topic.format(dev="D1"), payload, datetime.now(UTC))
    assert parsed.records == []
    assert parsed.rejections and {r.reason.value for r in parsed.rejections} == {reason}
    assert all(r.detail for r in parsed.rejections)  # the reason in words
    if len(parsed.rejections) == 1:
        assert parsed.rejections[0].payload == payload


def test_telemetry_object_with_rfc3339_ts_and_position() -> None:
    payload = (b'{"ts": "2026-11-22T08:15:00.120+07:00", "seq": 1042, "metrics": {"speed_kmh": 42.5, '
               b'"occupancy_pct": 31.0, "flow_veh_h": 1320, "custom_thing": 7}, "lat": 20.861, "lon": 106.683}')
    parsed = parse_message("ioc/v1/traffic/T-1/telemetry", payload, datetime(2026, 11, 22, 2, 0, tzinfo=UTC))
    (rec,) = parsed.records
    assert isinstance(rec, Reading)
    assert rec.ts == datetime(2026, 11, 22, 1, 15, 0, 120000, tzinfo=UTC)
    assert rec.metrics == {"speed_kmh": 42.5, "occupancy_pct": 31.0, "flow_veh_h": 1320.0, "custom_thing": 7.0}
    assert (rec.seq, rec.lat, rec.lon) == (1042, 20.861, 106.683)


def test_epoch_ms_and_boolean_metric() -> None:
    now = datetime.now(UTC)  # per test: a module-level clock goes stale in a long run
    ts = now_ms()
    parsed = parse_message("ioc/v1/bts/B1/telemetry", b'{"ts": %d, "metrics": {"mains_power": false}}' % ts, now)
    (rec,) = parsed.records
    assert isinstance(rec, Reading)
    assert rec.metrics == {"mains_power": 0.0}
    assert abs(rec.ts.timestamp() * 1000 - ts) < 1


def test_gateway_batch_keeps_good_items_and_quarantines_bad_ones() -> None:
    ts = now_ms()
    payload = (b'[{"ts": %d, "metrics": {"a": 1}}, {"ts": %d, "metrics": {"a": "x"}}, 5, '
               b'{"ts": %d, "metrics": {"a": 3}}]' % (ts, ts + 1, ts + 2))
    parsed = parse_message("ioc/v1/traffic/T1/telemetry", payload, datetime.now(UTC))
    assert [r.metrics["a"] for r in parsed.records if isinstance(r, Reading)] == [1.0, 3.0]
    assert [(r.item_index, r.reason) for r in parsed.rejections] == [(1, Reason.BAD_METRIC), (2, Reason.BAD_SHAPE)]
    assert parsed.rejections[0].detail.startswith("item 1 of 4:")


def test_ts_slightly_in_future_is_accepted() -> None:
    ts = datetime.now(UTC) + timedelta(seconds=200)
    parsed = parse_message("ioc/v1/traffic/T1/telemetry",
                           b'{"ts": "%s", "metrics": {"a": 1}}' % ts.isoformat().encode(), datetime.now(UTC))
    assert parsed.rejections == [] and len(parsed.records) == 1


def test_status_without_ts_uses_receive_time_unless_replayed_retained() -> None:
    now = datetime.now(UTC)  # per test: a module-level clock goes stale in a long run
    live = parse_message("ioc/v1/bts/B1/status", b'{"state": "offline", "reason": "lwt"}', now)
    (st,) = live.records
    assert isinstance(st, StatusUpdate)
    assert (st.state, st.reason, st.ts, st.ts_from_device) == ("offline", "lwt", now, True)
    replay = parse_message("ioc/v1/bts/B1/status", b'{"state": "offline"}', now, retained=True)
    assert isinstance(replay.records[0], StatusUpdate) and replay.records[0].ts_from_device is False


def test_event_defaults() -> None:
    now = datetime.now(UTC)  # per test: a module-level clock goes stale in a long run
    parsed = parse_message("ioc/v1/bts/B1/event", b'{"ts": %d, "type": "mains_power_lost"}' % now_ms(), now)
    (ev,) = parsed.records
    assert isinstance(ev, DeviceEvent)
    assert (ev.type, ev.severity, ev.detail) == ("mains_power_lost", "warning", {})


def test_snapshot_is_validated_and_sized() -> None:
    now = datetime.now(UTC)  # per test: a module-level clock goes stale in a long run
    jpeg = small_jpeg(3, 80, 60)
    assert jpeg_size(jpeg) == (80, 60)
    parsed = parse_message("ioc/v1/camera/C1/snapshot", jpeg, now)
    (snap,) = parsed.records
    assert isinstance(snap, Snapshot) and (snap.width, snap.height, snap.ts) == (80, 60, now)


@pytest.mark.parametrize(("name", "topic", "payload"), [pytest.param(*c, id=c[0]) for c in hostile_accepted_cases()])
def test_hostile_text_is_kept_made_safe(name: str, topic: str, payload: bytes) -> None:
    """NUL, controls, lone surrogates and bidi overrides in device text are replaced, the record kept."""
    from ingest.records import DeviceEvent, StatusUpdate
    from ingest.text import check_text
    from ioc.live.hub import encode

    parsed = parse_message(topic.format(dev="dev-1"), payload, datetime.now(UTC))
    assert not parsed.rejections and len(parsed.records) == 1
    rec = parsed.records[0]
    if isinstance(rec, StatusUpdate):
        assert rec.reason is not None
        check_text(rec.reason)
    else:
        assert isinstance(rec, DeviceEvent)
        encoded = encode({"detail": rec.detail})  # orjson refuses lone surrogates: this would raise
        assert "\\u0000" not in encoded


def test_an_exception_inside_the_parser_is_quarantined_as_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The catch-all: whatever raises while parsing becomes a quarantined ``internal_error``, never an exception."""
    import ingest.parse as parse_mod

    def broken(*args: object) -> None:
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(parse_mod, "_parse_telemetry", broken)
    parsed = parse_message("ioc/v1/traffic/dev-1/telemetry", b'{"ts": 1, "metrics": {"a": 1}}', datetime.now(UTC))
    assert not parsed.records
    (rej,) = parsed.rejections
    assert rej.reason.value == "internal_error"
    assert "RuntimeError: a bug nobody foresaw" in rej.detail
