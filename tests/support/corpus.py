"""Malformed payloads of every kind the device API refuses, with the reason each must get.

Each case is (kind, channel, device_id or None for a valid one, payload, expected reason). Timestamps are
filled in relative to now so "future" and valid cases stay valid whenever the tests run.
"""

from __future__ import annotations

import time

import cv2
import numpy as np

from ingest.contract import MAX_JSON_BYTES, MAX_SNAPSHOT_BYTES


def now_ms() -> int:
    return int(time.time() * 1000)


def small_jpeg(seed: int = 0, width: int = 64, height: int = 48) -> bytes:
    """A real JPEG made here (random noise, so every seed gives different bytes)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def huge_header_jpeg(width: int = 30000, height: int = 30000) -> bytes:
    """A small real JPEG whose frame header claims ``width`` x ``height`` pixels (a decompression bomb)."""
    data = bytearray(small_jpeg(2))
    pos = 2
    while pos + 4 <= len(data):
        marker, seg_len = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data[pos + 5:pos + 7] = height.to_bytes(2, "big")
            data[pos + 7:pos + 9] = width.to_bytes(2, "big")
            return bytes(data)
        pos += 2 + seg_len
    raise AssertionError("no frame header")


def hostile_accepted_cases() -> list[tuple[str, str, bytes]]:
    """(name, topic template, payload): hostile but valid messages, stored with their text made safe."""
    ts = now_ms()
    return [
        ("event_nul", "ioc/v1/bts/{dev}/event", b'{"ts": %d, "type": "door_open", "detail": {"x": "a\\u0000b"}}' % ts),
        ("event_surrogate_key", "ioc/v1/bts/{dev}/event",
         b'{"ts": %d, "type": "door_open", "detail": {"\\ud800": ["\\udfff", {"\\u001b[2J": 1}]}}' % ts),
        ("status_surrogate", "ioc/v1/bts/{dev}/status", b'{"state": "degraded", "reason": "fan \\ud83d broken"}'),
        ("status_controls", "ioc/v1/bts/{dev}/status", b'{"state": "online", "reason": "\\u0000\\u0007\\u202e ok"}'),
    ]


def malformed_cases() -> list[tuple[str, str, str, bytes, str]]:
    """(name, topic template with {dev}, payload, reason) for every refusal class."""
    ts = now_ms()
    good_metrics = b'"metrics": {"speed_kmh": 40}'
    jpeg = small_jpeg(1)
    return [
        ("not_utf8", "ioc/v1/traffic/{dev}/telemetry", b"\xff\xfe\x00bad", "not_utf8"),
        ("not_json", "ioc/v1/traffic/{dev}/telemetry", b"{ts: 1, metrics: }", "not_json"),
        ("truncated_json", "ioc/v1/bts/{dev}/telemetry", b'{"ts": 1, "metrics": {"a": 1', "not_json"),
        ("array_of_numbers", "ioc/v1/traffic/{dev}/telemetry", b"[1, 2, 3]", "bad_shape"),
        ("string_doc", "ioc/v1/traffic/{dev}/telemetry", b'"hello"', "bad_shape"),
        ("missing_metrics", "ioc/v1/traffic/{dev}/telemetry", b'{"ts": %d}' % ts, "bad_shape"),
        ("metrics_list", "ioc/v1/traffic/{dev}/telemetry", b'{"ts": %d, "metrics": [1]}' % ts, "bad_shape"),
        ("string_metric", "ioc/v1/traffic/{dev}/telemetry",
         b'{"ts": %d, "metrics": {"speed_kmh": "fast"}}' % ts, "bad_metric"),
        ("null_metric", "ioc/v1/bts/{dev}/telemetry", b'{"ts": %d, "metrics": {"battery_pct": null}}' % ts,
         "bad_metric"),
        ("bad_metric_name", "ioc/v1/bts/{dev}/telemetry", b'{"ts": %d, "metrics": {"a b": 1}}' % ts, "bad_metric"),
        ("nan_metric", "ioc/v1/traffic/{dev}/telemetry", b'{"ts": %d, "metrics": {"speed_kmh": NaN}}' % ts,
         "non_finite"),
        ("inf_metric", "ioc/v1/bts/{dev}/telemetry", b'{"ts": %d, "metrics": {"x": Infinity}}' % ts, "non_finite"),
        ("overflow_metric", "ioc/v1/bts/{dev}/telemetry", b'{"ts": %d, "metrics": {"x": 1e999}}' % ts, "non_finite"),
        ("bad_ts_string", "ioc/v1/traffic/{dev}/telemetry", b'{"ts": "yesterday", %s}' % good_metrics, "bad_ts"),
        ("ts_no_zone", "ioc/v1/traffic/{dev}/telemetry", b'{"ts": "2026-01-01T00:00:00", %s}' % good_metrics,
         "bad_ts"),
        ("ts_seconds", "ioc/v1/traffic/{dev}/telemetry", b'{"ts": %d, %s}' % (ts // 1000, good_metrics), "bad_ts"),
        ("missing_ts", "ioc/v1/traffic/{dev}/telemetry", b"{%s}" % good_metrics, "bad_ts"),
        ("future_ts", "ioc/v1/traffic/{dev}/telemetry", b'{"ts": %d, %s}' % (ts + 3_600_000, good_metrics),
         "future_ts"),
        ("unknown_kind", "ioc/v1/drone/{dev}/telemetry", b'{"ts": %d, %s}' % (ts, good_metrics), "unknown_kind"),
        ("unknown_channel", "ioc/v1/traffic/{dev}/config", b"{}", "unknown_channel"),
        ("snapshot_on_bts", "ioc/v1/bts/{dev}/snapshot", jpeg, "unknown_channel"),
        ("bad_device_id", "ioc/v1/traffic/bad$id/telemetry", b'{"ts": %d, %s}' % (ts, good_metrics), "bad_device_id"),
        ("long_device_id", "ioc/v1/traffic/" + "x" * 65 + "/telemetry", b'{"ts": %d, %s}' % (ts, good_metrics),
         "bad_device_id"),
        ("short_topic", "ioc/v1/traffic/{dev}", b"{}", "bad_topic"),
        ("oversize_telemetry", "ioc/v1/traffic/{dev}/telemetry",
         b'{"ts": %d, "pad": "%s", %s}' % (ts, b"x" * MAX_JSON_BYTES, good_metrics), "too_large"),
        ("oversize_snapshot", "ioc/v1/camera/{dev}/snapshot", jpeg + b"\0" * MAX_SNAPSHOT_BYTES, "too_large"),
        ("snapshot_png", "ioc/v1/camera/{dev}/snapshot", b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "not_jpeg"),
        ("snapshot_truncated", "ioc/v1/camera/{dev}/snapshot", jpeg[: len(jpeg) // 2], "not_jpeg"),
        ("status_bad_state", "ioc/v1/bts/{dev}/status", b'{"state": "sleepy"}', "bad_shape"),
        ("event_no_type", "ioc/v1/bts/{dev}/event", b'{"ts": %d, "severity": "major"}' % ts, "bad_shape"),
        ("event_bad_severity", "ioc/v1/bts/{dev}/event",
         b'{"ts": %d, "type": "door_open", "severity": "apocalyptic"}' % ts, "bad_shape"),
        ("ts_past_datetime", "ioc/v1/traffic/{dev}/telemetry",
         b'{"ts": "9999-12-31T23:59:59-01:00", %s}' % good_metrics, "bad_ts"),
        ("ts_before_datetime", "ioc/v1/traffic/{dev}/telemetry",
         b'{"ts": "0001-01-01T00:00:00+01:00", %s}' % good_metrics, "bad_ts"),
        ("snapshot_bomb", "ioc/v1/camera/{dev}/snapshot", huge_header_jpeg(), "image_too_large"),
        ("snapshot_wide", "ioc/v1/camera/{dev}/snapshot", huge_header_jpeg(60000, 16), "image_too_large"),
    ]
