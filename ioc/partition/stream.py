"""The partitioned, replayable stream of committed readings (NATS JetStream), and how devices map to partitions.

The numeric analytics of a large province can run on K workers. JetStream keeps the readings (a file
stream with a retention window), so a worker that takes over a partition replays what its predecessor had
not acknowledged; nothing about the queue or its consensus is ours.

Partitions follow districts, not devices: the domain rules judge a district as a whole (mains lost at
several BTS of a district, a district-wide slowdown), so every device of a district must be analysed by the
same worker. A province has tens of districts, so up to that many workers share the load evenly enough; a
device whose district is not known yet (no position) goes by its own id.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from ingest.contract import (
    DEVICE_ID_RE,
    MAX_BATCH_ITEMS,
    MAX_METRICS_PER_READING,
    METRIC_NAME_RE,
)
from ingest.text import find_bad_text

STREAM = "IOC_READINGS"


def subject(stream: str, partition: int) -> str:
    """Readings of ``partition`` are published on ``<stream>.<partition>``."""
    return f"{stream}.{partition}"


def partition_of(key: str, partitions: int) -> int:
    """The partition of a district code (or of a device id when its district is unknown)."""
    return zlib.crc32(key.encode()) % partitions


async def ensure_stream(js: Any, stream: str = STREAM, max_age_s: float = 24 * 3600.0, replicas: int = 1) -> None:
    """Create the stream if it is missing (file storage, kept ``max_age_s``; ``replicas`` > 1 on a cluster)."""
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig
    from nats.js.errors import NotFoundError

    try:
        await js.stream_info(stream)
    except NotFoundError:
        await js.add_stream(StreamConfig(
            name=stream, subjects=[f"{stream}.*"], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, max_age=max_age_s, duplicate_window=120.0, num_replicas=replicas))


@dataclass(frozen=True, slots=True)
class Row:
    """One reading as it travels on the stream."""

    device_id: str
    kind: str
    district: str
    metric: str
    ts: float  # epoch seconds
    value: float


def encode_rows(rows: list[Row]) -> bytes:
    """A batch of readings as one stream message (compact JSON arrays)."""
    return orjson.dumps([[r.device_id, r.kind, r.district, r.metric, r.ts, r.value] for r in rows])


def decode_rows(data: bytes) -> list[Row]:
    """The rows of a stream message that keep the readings' contract; the others are left out."""
    return decode_message(data).rows


@dataclass(slots=True)
class Decoded:
    """A stream message read: its rows, the items refused (with why), or why the whole message was refused."""

    rows: list[Row]
    refused: list[Any]
    reason: str | None = None


#: Items of one message at most: far beyond what one ingest batch puts on one partition (MAX_BATCH_ITEMS records
#: of at most MAX_METRICS_PER_READING readings each), so a larger message was not put there by an ingest worker.
MAX_ROWS = MAX_BATCH_ITEMS * MAX_METRICS_PER_READING
#: Epoch seconds of 3000-01-01: a time past it cannot become a finding's timestamp.
MAX_TS = 32_503_680_000.0


def _refusal(item: Any) -> str | None:
    """Why one item of a message is not a reading (the ingest contract, ingest/contract.py), or None."""
    if not (isinstance(item, list) and len(item) == 6):
        return "not a [device, kind, district, metric, ts, value] array"
    device_id, kind, district, metric, ts, value = item
    if not (isinstance(device_id, str) and DEVICE_ID_RE.fullmatch(device_id)):
        return "device id outside the contract"
    if not (isinstance(metric, str) and METRIC_NAME_RE.fullmatch(metric)):
        return "metric name outside the contract"
    for name, text in (("kind", kind), ("district", district)):
        if not isinstance(text, str) or len(text) > 128 or find_bad_text(text):
            return f"{name} is not a short clean text"
    for name, number in (("ts", ts), ("value", value)):
        if not isinstance(number, int | float) or isinstance(number, bool) or not math.isfinite(number):
            return f"{name} is not a finite number"
    if not 0 <= ts < MAX_TS:
        return "ts is not a time (epoch seconds)"
    return None


def decode_message(data: bytes) -> Decoded:
    """Read one stream message; never raises. Items that break the readings' contract (text PostgreSQL refuses
    in a device id, a 65-bit timestamp, ...) are refused one by one: stored, they would fail every save of the
    partition's state and every commit of its findings for ever."""
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        return Decoded([], [], f"not JSON ({err})")
    if not isinstance(items, list):
        return Decoded([], [], f"not an array of readings (a JSON {type(items).__name__})")
    if len(items) > MAX_ROWS:
        return Decoded([], [], f"{len(items)} items, more than the {MAX_ROWS} one ingest batch can hold")
    out, refused, reasons = [], [], set()
    for item in items:
        why = _refusal(item)
        if why is None:
            out.append(Row(item[0], item[1], item[2], item[3], float(item[4]), float(item[5])))
        else:
            refused.append(item)
            reasons.add(why)
    return Decoded(out, refused, "; ".join(sorted(reasons)) if reasons else None)


class Publisher:
    """Puts committed readings on the stream, one message per partition per batch.

    ``msg_id`` (JetStream's ``Nats-Msg-Id``) makes a batch published twice within the duplicate window
    (an ingest worker retrying after a lost ack) stored once.
    """

    def __init__(self, js: Any, partitions: int, stream: str = STREAM) -> None:
        self.js, self.partitions, self.stream = js, partitions, stream
        self.published = 0

    async def publish(self, rows: list[Row], msg_id: str | None = None) -> None:
        by_partition: dict[int, list[Row]] = {}
        for r in rows:
            by_partition.setdefault(partition_of(r.district or r.device_id, self.partitions), []).append(r)
        for p, part in by_partition.items():
            headers = {"Nats-Msg-Id": f"{msg_id}:{p}"} if msg_id else None
            await self.js.publish(subject(self.stream, p), encode_rows(part), stream=self.stream, headers=headers)
            self.published += len(part)
