"""Findings of the partition workers, on to the alert brain (a subject of the same JetStream stream).

The brain holding the lease reads ``<stream>.findings`` through one durable consumer, so findings raised
while the brain was failing over are delivered to its successor; they are acknowledged once handed to
the alert stage (in memory, as the brain's MQTT input is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from analytics.findings import Finding

logger = logging.getLogger(__name__)


def findings_subject(stream: str) -> str:
    return f"{stream}.findings"


def encode_findings(findings: list[Finding]) -> bytes:
    return orjson.dumps([[f.device_id, f.series, f.ts.timestamp(), f.type, float(f.score), f.explanation, f.detail]
                         for f in findings], option=orjson.OPT_SERIALIZE_NUMPY, default=str)


def decode_findings(data: bytes) -> list[Finding]:
    out = []
    for item in orjson.loads(data):
        try:
            device_id, series, ts, ftype, score, explanation, detail = item
            out.append(Finding(str(device_id), str(series), datetime.fromtimestamp(float(ts), UTC), str(ftype),
                               float(score), str(explanation), dict(detail or {})))
        except (TypeError, ValueError, OverflowError):
            logger.warning("a finding on the stream has an unexpected shape; skipped")
    return out


async def consume_findings(js: Any, stream: str, deliver: Callable[[list[Finding]], None],
                           stop: asyncio.Event) -> None:
    """Hand every finding on the stream to ``deliver`` (the brain's alert stage and hub) until ``stop``."""
    sub = await js.pull_subscribe(findings_subject(stream), durable=f"{stream}-brain-findings", stream=stream)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(64, timeout=1.0)
        except TimeoutError:
            continue
        for m in msgs:
            with contextlib.suppress(Exception):  # one bad message must not stop the brain's input
                deliver(decode_findings(m.data))
            await m.ack()
