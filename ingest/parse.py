"""Turn one MQTT message (topic + bytes) into typed records or quarantine rejections. Pure, no I/O.

Validation happens once, here; everything downstream trusts the records. A gateway batch (JSON array)
is validated item by item so one bad reading does not cost the good ones around it.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ingest import contract as c
from ingest.detail import VIEW_BYTES, bound_detail, read_large_event
from ingest.records import (
    DeviceEvent,
    ParsedMessage,
    Reading,
    Reason,
    Record,
    Rejection,
    Snapshot,
    StatusUpdate,
)
from ingest.text import clean_text

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ItemError(ValueError):
    """A payload item failed validation; carries the quarantine reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_message(topic: str, payload: bytes, received_at: datetime, retained: bool = False) -> ParsedMessage:
    """Validate and parse one message; never raises.

    Every input ends as records, rejections, or both. A bug or an input class nobody foresaw ends as an
    ``internal_error`` rejection carrying the exception, so one message can never stop the session.

    Args:
        topic: the MQTT topic it arrived on.
        payload: raw payload bytes.
        received_at: when the ingest received it (UTC, aware); used for the future-ts check and for
            status and snapshots that carry no timestamp of their own.
        retained: whether the broker flagged it as a retained message replayed on subscribe.

    Returns:
        The records to store and the rejections to quarantine.
    """
    try:
        return _parse_message(topic, payload, received_at, retained)
    except Exception as err:  # the structural catch-all: quarantine, never escape
        return internal_error(topic, payload, received_at, "parsing", err)


def internal_error(topic: str, payload: bytes, received_at: datetime, where: str, err: BaseException) -> ParsedMessage:
    """A message whose handling raised: quarantined with reason ``internal_error`` and the exception text."""
    detail = clean_text(f"{where} raised {type(err).__name__}: {err}", limit=2000)
    return ParsedMessage([], [Rejection(clean_text(topic, limit=1024), received_at, Reason.INTERNAL_ERROR, detail,
                                        bytes(payload))])


def _parse_message(topic: str, payload: bytes, received_at: datetime, retained: bool) -> ParsedMessage:
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "ioc" or parts[1] != "v1":
        return _reject(topic, received_at, payload, Reason.BAD_TOPIC,
                       "topic must be ioc/v1/<kind>/<device_id>/<channel>")
    _, _, kind, device_id, channel = parts
    if kind not in c.KINDS:
        return _reject(topic, received_at, payload, Reason.UNKNOWN_KIND,
                       f"unknown kind {kind[:40]!r}; expected one of {sorted(c.KINDS)}")
    if not c.DEVICE_ID_RE.fullmatch(device_id):
        return _reject(topic, received_at, payload, Reason.BAD_DEVICE_ID,
                       f"device id {device_id[:80]!r} must be 1-64 of [A-Za-z0-9_.-]")
    if channel not in c.CHANNELS_BY_KIND[kind]:
        return _reject(topic, received_at, payload, Reason.UNKNOWN_CHANNEL,
                       f"channel {channel[:40]!r} is not valid for kind {kind!r}; "
                       f"expected one of {sorted(c.CHANNELS_BY_KIND[kind])}")
    if channel == "snapshot":
        return _parse_snapshot(topic, device_id, kind, payload, received_at)

    if len(payload) > c.MAX_JSON_BYTES:
        return _reject(topic, received_at, payload, Reason.TOO_LARGE,
                       f"payload is {len(payload)} bytes; the {channel} limit is {c.MAX_JSON_BYTES}")
    # a large event: its detail is not built as a tree (ingest/detail.py); None: read whole, as any other
    large = read_large_event(payload) if channel == "event" and len(payload) > VIEW_BYTES else None
    if large is not None:
        try:
            return ParsedMessage([_event(device_id, kind, large[0], received_at, len(payload), large[1])], [])
        except ItemError as err:
            return _reject(topic, received_at, payload, err.reason, err.detail)
    try:
        doc = _load_json(payload)
    except ItemError as err:
        return _reject(topic, received_at, payload, err.reason, err.detail)

    if channel == "telemetry":
        return _parse_telemetry(topic, device_id, kind, doc, payload, received_at)
    try:
        if channel == "status":
            record: Record = _status(device_id, kind, doc, received_at, retained)
        else:
            record = _event(device_id, kind, doc, received_at, len(payload))
    except ItemError as err:
        return _reject(topic, received_at, payload, err.reason, err.detail)
    return ParsedMessage([record], [])


def _reject(topic: str, received_at: datetime, payload: bytes, reason: Reason, detail: str,
            item_index: int | None = None) -> ParsedMessage:
    return ParsedMessage([], [Rejection(topic, received_at, reason, detail, payload, item_index)])


def _load_json(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as fast_err:
        # Slow path, only for bad input: tell "not UTF-8" apart from "not JSON", and let NaN/Infinity
        # (which the stdlib parser accepts) through so the metric check can name the offending metric.
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ItemError(Reason.NOT_UTF8, f"payload is not valid UTF-8 (byte {err.start})") from None
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise ItemError(Reason.NOT_JSON, f"payload is not valid JSON: {fast_err}") from None


def _parse_telemetry(topic: str, device_id: str, kind: str, doc: Any, payload: bytes,
                     received_at: datetime) -> ParsedMessage:
    if isinstance(doc, dict):
        try:
            return ParsedMessage([_reading(device_id, kind, doc, received_at)], [])
        except ItemError as err:
            return _reject(topic, received_at, payload, err.reason, err.detail)
    if not isinstance(doc, list):
        return _reject(topic, received_at, payload, Reason.BAD_SHAPE,
                       f"telemetry must be a JSON object or an array of objects, got {_type_name(doc)}")
    if not doc:
        return _reject(topic, received_at, payload, Reason.BAD_SHAPE, "telemetry batch is an empty array")
    if len(doc) > c.MAX_BATCH_ITEMS:
        return _reject(topic, received_at, payload, Reason.BAD_SHAPE,
                       f"telemetry batch has {len(doc)} items; the limit is {c.MAX_BATCH_ITEMS}")
    out = ParsedMessage([], [])
    for index, item in enumerate(doc):
        try:
            if not isinstance(item, dict):
                raise ItemError(Reason.BAD_SHAPE, f"batch item must be an object, got {_type_name(item)}")
            out.records.append(_reading(device_id, kind, item, received_at))
        except ItemError as err:
            out.rejections.append(Rejection(topic, received_at, err.reason,
                                            f"item {index} of {len(doc)}: {err.detail}",
                                            _item_bytes(item), index))
    return out


def _reading(device_id: str, kind: str, doc: dict[str, Any], received_at: datetime) -> Reading:
    metrics = doc.get("metrics")
    if not isinstance(metrics, dict):
        raise ItemError(Reason.BAD_SHAPE, "'metrics' must be an object of name -> number"
                        if "metrics" in doc else "missing 'metrics' object")
    if not metrics:
        raise ItemError(Reason.BAD_SHAPE, "'metrics' is empty")
    if len(metrics) > c.MAX_METRICS_PER_READING:
        raise ItemError(Reason.BAD_SHAPE, f"{len(metrics)} metrics; the limit is {c.MAX_METRICS_PER_READING}")
    values: dict[str, float] = {}
    for name, raw in metrics.items():
        if not c.METRIC_NAME_RE.fullmatch(name):
            raise ItemError(Reason.BAD_METRIC,
                            f"metric name {name[:80]!r} must match {c.METRIC_NAME_RE.pattern}")
        values[name] = _metric_value(name, raw)
    ts = _timestamp(doc.get("ts"), received_at, required=True)
    seq = doc.get("seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq < 2**63):
        raise ItemError(Reason.BAD_SHAPE, f"'seq' must be a non-negative integer, got {seq!r:.40}")
    lat, lon = _position(doc)
    return Reading(device_id, kind, ts, values, seq, lat, lon)


def _in_range(name: str, value: float) -> float:
    if -c.MAX_ABS_VALUE <= value <= c.MAX_ABS_VALUE:
        return value
    raise ItemError(Reason.NON_FINITE, f"metric {name!r} is {value:.3g}: beyond ±{c.MAX_ABS_VALUE:g}, refused "
                    "(sums of such values overflow)")


def _metric_value(name: str, raw: Any) -> float:
    kind = type(raw)
    if kind is float:
        if not math.isfinite(raw):
            raise ItemError(Reason.NON_FINITE, f"metric {name!r} is {raw} (NaN and Infinity are refused)")
        return _in_range(name, raw)
    if kind is int:
        try:  # the lenient slow path keeps integers of any length: float() of 10**400 overflows
            return _in_range(name, float(raw))
        except OverflowError:
            raise ItemError(Reason.NON_FINITE, f"metric {name!r} is out of range") from None
    if kind is bool:  # documented: booleans are stored as 1/0 (e.g. mains_power)
        return 1.0 if raw else 0.0
    raise ItemError(Reason.BAD_METRIC, f"metric {name!r} is not a number (got {_type_name(raw)} {raw!r:.40})")


def _timestamp(raw: Any, received_at: datetime, required: bool) -> datetime:
    if raw is None:
        if required:
            raise ItemError(Reason.BAD_TS, "missing 'ts' (RFC 3339 string or epoch milliseconds)")
        return received_at
    if type(raw) is str:
        shown = clean_text(raw[:60])
        try:
            ts = datetime.fromisoformat(raw)
        except ValueError:
            raise ItemError(Reason.BAD_TS, f"'ts' {shown!r} is not an RFC 3339 timestamp") from None
        if ts.tzinfo is None:
            raise ItemError(Reason.BAD_TS, f"'ts' {shown!r} has no UTC offset (add 'Z' or +07:00)")
        try:  # 9999-12-31T23:59:59-01:00 is valid RFC 3339 but past what a datetime holds in UTC
            ts = ts.astimezone(UTC)
        except OverflowError:
            raise ItemError(Reason.BAD_TS, f"'ts' {shown!r} is out of range") from None
    elif type(raw) in (int, float):
        if (type(raw) is float and not math.isfinite(raw)) or not c.MIN_TS_EPOCH_MS <= raw < 253_402_300_800_000:
            hint = " (epoch seconds? ts must be in milliseconds)" if 946_684_800 <= raw < 4e10 else ""
            raise ItemError(Reason.BAD_TS, f"'ts' {raw!r:.40} is out of range{hint}")
        ts = _EPOCH + timedelta(milliseconds=raw)
    else:
        raise ItemError(Reason.BAD_TS, f"'ts' must be an RFC 3339 string or epoch ms, got {_type_name(raw)}")
    if ts.year < 2000:
        raise ItemError(Reason.BAD_TS, f"'ts' {ts.isoformat()} is before 2000")
    ahead = (ts - received_at).total_seconds()
    if ahead > c.MAX_FUTURE_SECONDS:
        raise ItemError(Reason.FUTURE_TS,
                        f"'ts' is {ahead:.0f} s in the future (limit {c.MAX_FUTURE_SECONDS:.0f} s); "
                        "check the device clock")
    return ts


def _position(doc: dict[str, Any]) -> tuple[float | None, float | None]:
    raw_lat, raw_lon = doc.get("lat"), doc.get("lon")
    if raw_lat is None and raw_lon is None:
        return None, None
    if not (type(raw_lat) in (int, float) and type(raw_lon) in (int, float)):
        raise ItemError(Reason.BAD_SHAPE, "'lat' and 'lon' must both be numbers when either is sent")
    if not (-90 <= raw_lat <= 90 and -180 <= raw_lon <= 180):  # type: ignore[operator]  # numbers, checked above
        raise ItemError(Reason.BAD_SHAPE, f"position ({raw_lat!r:.20}, {raw_lon!r:.20}) is outside the globe")
    lat, lon = float(raw_lat), float(raw_lon)  # type: ignore[arg-type]  # in range: no overflow
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # NaN
        raise ItemError(Reason.BAD_SHAPE, f"position ({lat}, {lon}) is outside the globe")
    return lat, lon


def _status(device_id: str, kind: str, doc: Any, received_at: datetime, retained: bool) -> StatusUpdate:
    if not isinstance(doc, dict):
        raise ItemError(Reason.BAD_SHAPE, f"status must be a JSON object, got {_type_name(doc)}")
    state = doc.get("state")
    if not isinstance(state, str) or state not in c.STATES:  # an array or object is unhashable: no set lookup
        raise ItemError(Reason.BAD_SHAPE, f"'state' must be one of {sorted(c.STATES)}, got {state!r:.40}")
    reason = doc.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise ItemError(Reason.BAD_SHAPE, "'reason' must be a string")
    has_ts = doc.get("ts") is not None
    ts = _timestamp(doc.get("ts"), received_at, required=False)
    # A retained status without ts replayed on subscribe is old news: it must not look newer than it is.
    return StatusUpdate(device_id, kind, ts, state, None if reason is None else clean_text(reason, limit=500),
                        ts_from_device=has_ts or not retained)


def _event(device_id: str, kind: str, doc: Any, received_at: datetime, size: int,
           bounded: tuple[dict[str, Any], str | None] | None = None) -> DeviceEvent:
    if not isinstance(doc, dict):
        raise ItemError(Reason.BAD_SHAPE, f"event must be a JSON object, got {_type_name(doc)}")
    etype = doc.get("type")
    if not isinstance(etype, str) or not c.EVENT_TYPE_RE.fullmatch(etype):
        raise ItemError(Reason.BAD_SHAPE, f"'type' must be a name matching {c.EVENT_TYPE_RE.pattern}")
    severity = doc.get("severity", "warning")
    if not isinstance(severity, str) or severity not in c.SEVERITIES:
        raise ItemError(Reason.BAD_SHAPE, f"'severity' must be one of {sorted(c.SEVERITIES)}")
    detail = doc.get("detail", {})
    if not isinstance(detail, dict):
        raise ItemError(Reason.BAD_SHAPE, "'detail' must be an object")
    ts = _timestamp(doc.get("ts"), received_at, required=True)
    # a large detail: stored whole, carried on bounded (ingest/detail.py); ``bounded``: read so from its text
    view, stored = bound_detail(detail, size) if bounded is None else bounded
    return DeviceEvent(device_id, kind, ts, etype, severity, view, stored)


def _parse_snapshot(topic: str, device_id: str, kind: str, payload: bytes,
                    received_at: datetime) -> ParsedMessage:
    if len(payload) > c.MAX_SNAPSHOT_BYTES:
        return _reject(topic, received_at, payload, Reason.TOO_LARGE,
                       f"snapshot is {len(payload)} bytes; the limit is {c.MAX_SNAPSHOT_BYTES}")
    size = jpeg_size(payload)
    if size is None:
        return _reject(topic, received_at, payload, Reason.NOT_JPEG,
                       "snapshot is not a complete JPEG (needs SOI, a frame header and EOI)")
    width, height = size
    if width > c.MAX_IMAGE_WIDTH or height > c.MAX_IMAGE_HEIGHT or width * height > c.MAX_IMAGE_PIXELS:
        return _reject(topic, received_at, payload, Reason.IMAGE_TOO_LARGE,
                       f"snapshot header says {width}x{height} pixels; the limits are {c.MAX_IMAGE_WIDTH}x"
                       f"{c.MAX_IMAGE_HEIGHT} and {c.MAX_IMAGE_PIXELS:,} pixels (checked before any decode)")
    scans = jpeg_scans(payload)
    if scans > c.MAX_JPEG_SCANS:
        return _reject(topic, received_at, payload, Reason.IMAGE_TOO_LARGE,
                       f"snapshot holds {scans} scans; the limit is {c.MAX_JPEG_SCANS} (each is a decoding pass over "
                       "the whole picture; checked before any decode)")
    return ParsedMessage([Snapshot(device_id, kind, received_at, payload, width, height)], [])


#: Marker codes that carry no length: a stuffed zero, TEM, restarts, SOI, EOI. Before the frame header libjpeg
#: skips them and scans on for the next marker, so a walker that took their next two bytes as a length could be led
#: to a small frame header while the decoder reads a 30000x30000 one (3 KB: 6.5 s and 1.8 GB to decode).
_NO_LENGTH = frozenset({0x00, 0x01, *range(0xD0, 0xDA)})


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Return (width, height) from a JPEG's frame header, or None if ``data`` is not a complete JPEG whose segments
    before that header all follow one another by their lengths (as the decoder then reads the same header)."""
    if len(data) < 128 or data[:3] != b"\xff\xd8\xff" or b"\xff\xd9" not in data[-32:]:
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:  # the decoder reads on past these, not by a length: it could see another frame
            return None
        seg_len = int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > end:
                return None
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return (width, height) if width and height else None
        if marker == 0xDA or seg_len < 2:  # start of scan before any frame header
            return None
        pos += 2 + seg_len
    return None


def jpeg_scans(data: bytes) -> int:
    """How many scans a JPEG holds at most: its SOS markers (0xFFDA). Entropy-coded data cannot hold that pair (a
    0xFF there is followed by 0x00 or a restart marker), so only metadata (APPn, comments) can add to the count."""
    return data.count(b"\xff\xda")


def _item_bytes(item: Any) -> bytes:
    try:
        return orjson.dumps(item)
    except (TypeError, orjson.JSONEncodeError):  # lone surrogates, ints past 64 bits: the stdlib escapes them
        return json.dumps(item, default=str, allow_nan=True).encode()


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)
